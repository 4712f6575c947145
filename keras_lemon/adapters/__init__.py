"""Model adapters: which target layer each source layer feeds, per model family."""
