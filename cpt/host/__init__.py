"""This host, checked: what `cpt check` probes (check.py) and what verify-before-restore
checks an image against (verify.py).

The facts both compare with an image (kernel, vDSO, CPU features) are the system layer's
(cpt/sys/host.py): the dump records them in the image header too, and the dump stands
below this package.
"""
