"""Reference systems assembled from vdblocks (EVDM, PVDM, CMD, ETC) and their shared machinery."""
