"""The book's tooling (not part of ptsim): reading book.toml, executing chapters."""
