"""Per-dataset facts, scan readers, weak-label draws and the range projection.

Everything here is shared by data_prep (raw scans -> TFRecords) and by predict (raw scans ->
labels), so training and inference read, label and project a scan in one way.
"""
