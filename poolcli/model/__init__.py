"""The model: where it is and what it is (resolve), its weights loaded on a device (load), and its identity."""
