"""DiNTS's space (He et al., CVPR 2021): multi-path topologies over blocks × depths, each edge switched on
independently, decoded to a topology that is guaranteed to be fed and to reach the head."""
