"""The core of eventbus: settings, storage, status rules, auth, dispatch. No HTTP here."""
