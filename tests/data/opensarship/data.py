#!/usr/bin/env python3
"""Write a tiny OpenSARShip fixture in the distributed layout (run from the repo root; writes next to itself).

* ``OpenSARShip_1.zip``: one 1.0-style scene zip whose files sit under a ``<scene>/`` prefix (dual-pol GRD,
  2 ships, plus one chip that has no ``<ship>`` record).
* ``OpenSARShip_2.zip``: 2.0-style scene zips with ``Ship.xml`` and ``Patch*/`` at the zip root:
  a dual-pol GRD scene whose ``Ship.xml`` ends with the real-world ``<\\ShipList>`` defect (4 ships, one
  ``Patch_Cal`` name truncated to ``Search_...`` as in the real data, one record without chips), a dual-pol
  SLC scene (4-plane complex ``Patch``) and a single-pol (1SSV) GRD scene with unsuffixed chips.

Chips are 8-14 px: ``Patch`` float32 (GRD amplitude: VH, VV planes; SLC: VH re, VH im, VV re, VV im),
``Patch_Cal`` float32 sigma0 (VH, VV), ``Patch_Uint8`` uint8, one file per polarisation.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
DATE = (2016, 1, 31, 0, 0, 0)  # fixed zip timestamps: byte-identical output on every run

OS1_SCENE = "S1A_IW_GRDH_1SDV_20150823T221233_20150823T221258_007396_00A2CA_54D0"
OS2_GRD = "S1A_IW_GRDH_1SDV_20160131T101646_20160131T101715_009737_00E392_36F7"
OS2_SLC = "S1A_IW_SLC__1SDV_20160606T221231_20160606T221258_011596_011B8A_3FF3"
OS2_SSV = "S1A_IW_GRDH_1SSV_20160131T204259_20160131T204324_009743_00E3C6_E792"

# (type text in file names, centre x, centre y, AIS code, MMSI text, length, width, elaborated type, size)
SHIPS = {
    OS1_SCENE: [
        ("Cargo", 1601, 7784, "71", "413376390", "200", "32", "Bulk Carrier", 12),
        ("Passenger", 2210, 905, "60", "412000001", "120", "20", "Ro-Ro/Passenger Ship", 10),
    ],
    OS2_GRD: [
        ("Cargo", 120, 340, "70", "412000000", "190", "30", "Container Ship", 14),
        ("Tanker", 200, 50, "80", "", "180", "28", "Oil Products Tanker", 12),
        ("Other Type", 10, 20, "0", "0", "0", "0", "Fishing", 8),
        ("Search and Rescue vessel", 77, 88, "51", "412000003", "60", "12", "Salvage/Rescue Vessel", 9),
    ],
    OS2_SLC: [("Tug", 25277, 9768, "52", "412000004", "32", "10", "Tug", 10)],
    OS2_SSV: [("Tanker", 10109, 8125, "84", "412000005", "230", "36", "LNG Tanker", 11)],
}
#: <ship> records with no chip at all (the reader counts and skips them).
ORPHAN_RECORDS = {OS2_GRD: [(999, 999)]}
#: chips with no <ship> record (the reader counts and skips them).
ORPHAN_CHIPS = {OS1_SCENE: [("Cargo", 3000, 3000, 8)]}


def ship_xml(scene: str, broken_close: bool) -> bytes:
    """Ship.xml with the real file's sections, tab indentation and CRLF line ends."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<ShipList>"]
    records = [(cx, cy, code, mmsi, length, width, elab) for _, cx, cy, code, mmsi, length, width, elab, _ in
               SHIPS[scene]]
    records += [(cx, cy, "70", "1", "100", "20", "Cargo") for cx, cy in ORPHAN_RECORDS.get(scene, [])]
    for i, (cx, cy, code, mmsi, length, width, elab) in enumerate(records):
        sections = {
            "SARShipInformation": [
                ("Time_UTC", "2016/1/31.10:17:00"), ("Head_x", cx - 5), ("Head_y", cy - 2), ("Tail_x", cx + 5),
                ("Tail_y", cy + 2), ("UpperLeft_x", cx + 20), ("UpperLeft_y", cy + 20), ("LowerRight_x", cx - 20),
                ("LowerRight_y", cy - 20), ("Center_x", cx), ("Center_y", cy), ("Center_longitude", "1.145977e+02"),
                ("Center_latitude", "2.217542e+01"), ("Manual_Length", length), ("North_Direction", "9.337400e+01"),
                ("Chip_Direction", "7.596376e+01"), ("Incidence", f"{34.0 + i:.6f}"), ("Elevation", "30.271830"),
                ("SlantRangeTime", "5499479.500000"),
            ],
            "AISShipInformation": [
                ("Time", 1454235420 + i), ("MMSI", mmsi), ("Nav_Status", 0), ("Rot", 0), ("Sog", 127),
                ("Pos_Acc", 0), ("Longitude", "114.613297"), ("Latitude", "22.173700"),
                ("Projected_Longitude", "114.598073"), ("Projected_Latitude", "22.175795"), ("Cog", "2630.00"),
                ("True_Head", "511.00" if i == 1 else "262.00"), ("Name", f"FIXTURE {i}"), ("Ship_Type", code),
                ("IMO", 9402627 + i), ("Callsign", f"VRF{i}"), ("Length", length), ("Width", width),
                ("Draught", 116), ("Msgid", 1),
            ],
            "MatchInformation": [("Length_error", "2.000000"), ("Length_error_rate", "0.009615"),
                                 ("Distance_error", "57.934698")],
            "MarineTrafficInformation": [
                ("Length_overall", f"{length}.940000"), ("Breadth_extreme", f"{width}.860000"),
                ("Elaborated_type", elab), ("Gross_tonnage", 26404), ("Deadweight", 34194),
                ("Flag", "Hong Kong [HK]"), ("Year_built", 2009),
            ],
            "ChipNoise": [("Interference", 0)],
        }
        lines.append("\t<ship>")
        for section, fields in sections.items():
            lines.append(f"\t\t<{section}>")
            lines += [f"\t\t\t<{tag}>{value}</{tag}>" for tag, value in fields]
            lines.append(f"\t\t</{section}>")
        lines.append("\t</ship>")
    lines.append("<\\ShipList>" if broken_close else "</ShipList>")
    return "\r\n".join(lines).encode("utf-8")


def tif(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)
    return buffer.getvalue()


def chip_files(scene: str, rng: np.random.Generator) -> dict[str, bytes]:
    """``relative path -> bytes`` of every chip of ``scene``."""
    dual = "_1SDV_" in scene
    slc = "_SLC_" in scene
    files: dict[str, bytes] = {}
    chips = [(t, cx, cy, size) for t, cx, cy, *_, size in SHIPS[scene]] + ORPHAN_CHIPS.get(scene, [])
    for type_text, cx, cy, size in chips:
        sea = rng.gamma(1.0, 0.02, size=(size, size, 2 if dual else 1)).astype(np.float32)
        sea[size // 2 - 1: size // 2 + 2, size // 2 - 2: size // 2 + 3] += 5.0  # the ship
        cal_name = "Search" if type_text.startswith("Search") else type_text  # truncated as in the real data
        files[f"Patch_Cal/{cal_name}_x{cx}_y{cy}.tif"] = tif(sea if dual else sea[:, :, 0])
        if slc:
            planes = rng.normal(0.0, 100.0, size=(size, size, 4)).astype(np.float32)
            files[f"Patch/{type_text}_x{cx}_y{cy}.tif"] = tif(planes)
        else:
            amplitude = (np.sqrt(sea) * 400.0).round().astype(np.float32)
            files[f"Patch/{type_text}_x{cx}_y{cy}.tif"] = tif(amplitude if dual else amplitude[:, :, 0])
        display = (np.clip(10 * np.log10(sea) + 35.0, 0, 45) / 45 * 255).astype(np.uint8)
        if dual:
            files[f"Patch_Uint8/Visual_{type_text}_x{cx}_y{cy}_vh.tif"] = tif(display[:, :, 0])
            files[f"Patch_Uint8/Visual_{type_text}_x{cx}_y{cy}_vv.tif"] = tif(display[:, :, 1])
        else:
            files[f"Patch_Uint8/Visual_{type_text}_x{cx}_y{cy}.tif"] = tif(display[:, :, 0])
    return files


def zip_bytes(files: dict[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(zipfile.ZipInfo(name, DATE), data, compress_type=method)
    return buffer.getvalue()


def scene_zip(scene: str, rng: np.random.Generator, prefix: str, broken_close: bool) -> bytes:
    files = {f"{prefix}{name}": data for name, data in chip_files(scene, rng).items()}
    files[f"{prefix}Ship.xml"] = ship_xml(scene, broken_close)
    files[f"{prefix}{scene}.xml"] = b"<product><adsHeader/></product>"  # scene metadata, not read
    return zip_bytes(files)


def main() -> None:
    rng = np.random.default_rng(0)
    os1 = {f"{OS1_SCENE}.zip": scene_zip(OS1_SCENE, rng, f"{OS1_SCENE}/", broken_close=False)}
    os2 = {
        f"{OS2_GRD}.zip": scene_zip(OS2_GRD, rng, "", broken_close=True),
        f"{OS2_SLC}.zip": scene_zip(OS2_SLC, rng, "", broken_close=False),
        f"{OS2_SSV}.zip": scene_zip(OS2_SSV, rng, "", broken_close=True),
    }
    (HERE / "OpenSARShip_1.zip").write_bytes(zip_bytes(os1, compress=False))
    (HERE / "OpenSARShip_2.zip").write_bytes(zip_bytes(os2, compress=False))


if __name__ == "__main__":
    main()
