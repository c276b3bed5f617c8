"""File I/O and datasets: .mat v5/v7.3, image folders, band selection, preparation, demo data."""
