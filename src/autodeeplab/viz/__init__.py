"""Every picture: the network-level path, the cell, α/β over the epochs, training curves."""
