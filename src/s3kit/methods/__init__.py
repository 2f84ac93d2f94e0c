"""Training methods, one file each: distilhubert, dvcc, m2ds, rewire, prune, pretrain."""
