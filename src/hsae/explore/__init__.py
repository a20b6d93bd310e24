"""Forest explorer: per-feature contexts (`contexts`) and the offline HTML browser (`browse`)."""
