"""Data layer: manifest schema, image reading, collection adapters, synthetic phantoms, splits,
duplicate detection, cache and batch loading. See DESIGN.md for the manifest contract."""
