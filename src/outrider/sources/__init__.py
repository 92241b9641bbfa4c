"""Object stores and volumes behind one interface (`sources.base.Source`)."""
