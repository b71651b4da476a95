"""Serving: immutable snapshots of the learned state and the HTTP API that predicts on them."""
