"""The data layer: Kvasir-SEG folders (downloaded, local or synthetic), pairing, splits, Dataset."""
