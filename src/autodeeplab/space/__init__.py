"""What is searched: the search-space contract (:mod:`.contract`) and the spaces that implement it."""
