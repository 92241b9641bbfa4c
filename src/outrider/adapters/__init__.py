"""Desired LoRA state: what should be loaded (`reconciler`), where adapter files come from (`fetch`), the
adapters file (`file`). The HTTP layer and the supervisor use `Reconciler`; nothing here imports `http`."""
