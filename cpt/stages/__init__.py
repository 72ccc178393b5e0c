"""The stages of checkpoint and restore (vzctl's chkpnt and restore), for a process tree;
the VE layer runs the same stages for a VE (ve/stages.py).

    stage.py     Stage (CHKPNT, SUSPEND, DUMP, KILL, RESUME, RESTORE, UNDUMP) and Stages,
                 the one interface that runs them, for a tree or a VE
    trees.py     TreeStages: the stages of a process tree, each with its lock held
    tree.py      Tree: a process tree as the stages see it (root, freezer, state, VE mode)
    store.py     the run directory, the per-object lock, the stage state file
    suspend.py   freeze the tree in a cgroup of its own (a VE: in its cgroup, link cut)
    dump.py      dump the suspended tree; the full checkpoint (suspend, dump, kill/resume)
    kill.py      kill the frozen tree and wait until its PIDs are free
    resume.py    thaw it and move it back to its cgroups
    restore.py   verify the image against this host, then undump or restore

Each stage may be its own command: the frozen state outlives the command in the freezer
cgroup, and the state file remembers the tree (its processes' original cgroups).
"""
