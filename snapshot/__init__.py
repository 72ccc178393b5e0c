"""Snapshots of VEs, on top of the VE layer (ve/) and storage (storage/).

catalog.py   the catalog of one VE's snapshots (one JSON file) and the snapshot record
hooks.py     what snapshots add to the VE layer: ve.hooks.SnapshotHooks kept in the
             catalog (a dump's snapshot, a spent dump, a rollback's live contents, a
             destroy), and ve_manager(), the VE layer built with them: use it, not a bare
             ve.lifecycle.VEManager, wherever VEs are checkpointed
manager.py   the snapshot operations: create, list, show, diff, delete, cleanup, rollback
"""
