"""The download engine: plan (list + filter), chunked parallel ranged writes, resume manifests, verification,
atomic publish, and jobs (progress, cancel, de-duplication). It talks to stores only through `sources.base.Source`.
"""
