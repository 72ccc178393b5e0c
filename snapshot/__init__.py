"""The snapshot manager of VEs: the catalog of a VE's snapshots (catalog.py) and the
operations on them (manager.py: create, list, show, diff, delete, cleanup, rollback).

It stands on ve/ (VEs and their checkpoints) and storage/ (filesystems and the pool).
"""
