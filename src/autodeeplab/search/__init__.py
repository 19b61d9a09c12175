"""The bilevel architecture search: one loop over the search-space contract, its settings, its state on
disk, and the memory/time estimate."""
