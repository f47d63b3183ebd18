"""A run seen from outside: its TensorBoard scalars (`run_events`) and the search's pictures
(`search_picture`)."""
