"""PEGP projection (docs/method.md sections 1-3): the declaration of a protected space (spec.py), its
feature statistics and basis growth (space.py, basis.py), and the projection of an update (project.py). It
knows no paradigm and no configuration beyond `ProjectionConfig`."""
