"""Raw LiDAR scans -> TFDS-loadable TFRecord range images with weak labels."""
