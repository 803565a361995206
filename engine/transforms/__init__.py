"""Weight transformations shared by methods: norm fusion, PCA bases, shortcut layers."""
