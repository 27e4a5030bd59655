"""Writes the tiny ATRNet-STAR fixtures next to this file (run from the repo root:
``python tests/data/atrnet_star/data.py``).

* ``ground/``: ground-range chips (8x8 uint8 1-band TIFF + same-stem XML in the manual's schema
  ``object/{target_id,class,subclass,type,length,width,height,xmin..ymax}``) under ``SOC_40classes/{train,test}``
  (types with a space and an apostrophe in their names) and ``EOC_depression/{train,test_30}``;
* ``slant/``: one slant-range chip, a ``.mat`` with ``data_hh/hv/vh/vv`` (4x4 complex64) + XML using
  ``object/{category,class,type}``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.io
import tifffile

HERE = Path(__file__).resolve().parent

GROUND_XML = """<annotation><filename>{name}.tif</filename>
 <image><height>8</height><width>8</width><depth>1</depth><format>ground_range_uint8</format>
  <range_dimension>1_height</range_dimension><cross_range_dimension>2_width</cross_range_dimension></image>
 <object><target_id>{target_id}</target_id><class>{category}</class><subclass>{subclass}</subclass>
  <type>{type}</type><length>{length}m</length><width>1.79m</width><height>1.88m</height>
  <xmin>{xmin}</xmin><xmax>{xmax}</xmax><ymin>1</ymin><ymax>7</ymax></object>
 <scene><scene_name>{scene}</scene_name></scene>
 <sensor><platform>airborne</platform><imaging_mode>strimap</imaging_mode><band>{band}</band>
  <polarization>{pol}</polarization><range_resolution>0.15m</range_resolution>
  <cross_range_resolution>0.15m</cross_range_resolution><depression_angle>{dep}°</depression_angle>
  <target_azimuth_angle>{azi}°</target_azimuth_angle></sensor></annotation>
"""

SLANT_XML = """<annotation><filename>{name}.mat</filename>
 <object><category>Car</category><class>Compact_SUV</class><type>Buick_Excelle_GT</type></object>
 <scene><scene_name>factory</scene_name></scene>
 <sensor><band>KU</band><polarization>HH</polarization><depression_angle>15°</depression_angle>
  <target_azimuth_angle>30°</target_azimuth_angle></sensor></annotation>
"""

# folder, type, target_id, class, subclass, band, pol, depression, azimuth, id, scene, length
GROUND = [
    ("SOC_40classes/train", "Buick_Excelle_GT", 12, "Car", "Compact_SUV", "KU", "HH", 15, 0, "253993", "sandstone", 4.5),
    ("SOC_40classes/train", "Changfeng_Cheetah_CFA6473C", 13, "Car", "Medium_SUV", "KU", "HH", 15, 30, "253994",
     "sandstone", 4.8),
    ("SOC_40classes/train", "Chang'an_CS75_Plus", 4, "Car", "Medium_SUV", "X", "HH", 45, 60, "000005", "city", 4.6),
    ("SOC_40classes/test", "Chery_Arrizo 5", 27, "Car", "Medium_Car", "X", "VV", 30, 120, "000001", "factory", 4.5),
    ("SOC_40classes/test", "Buick_Excelle_GT", 12, "Car", "Compact_SUV", "KU", "HH", 15, 90, "253995", "woodland",
     4.5),
    ("EOC_depression/train", "Buick_Excelle_GT", 12, "Car", "Compact_SUV", "KU", "HH", 15, 0, "253993", "sandstone",
     4.5),
    ("EOC_depression/test_30", "Buick_Excelle_GT", 12, "Car", "Compact_SUV", "X", "HH", 30, 90, "000002", "factory",
     4.5),
]


def main() -> None:
    rng = np.random.default_rng(11)
    for tree in ("ground", "slant"):
        shutil.rmtree(HERE / tree, ignore_errors=True)
    for i, (folder, type_, target_id, category, subclass, band, pol, dep, azi, id_, scene, length) in enumerate(GROUND):
        name = f"{band}_{pol}_{dep}_{azi}_{id_}"
        directory = HERE / "ground" / folder / type_
        directory.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 60, (8, 8), dtype=np.uint8)
        pixels[2:6, 1 + i % 3:5 + i % 3] = 220
        tifffile.imwrite(directory / f"{name}.tif", pixels, photometric="minisblack")
        (directory / f"{name}.xml").write_text(GROUND_XML.format(
            name=name, target_id=target_id, category=category, subclass=subclass, type=type_, length=length,
            xmin=1 + i % 3, xmax=5 + i % 3, scene=scene, band=band, pol=pol, dep=dep, azi=azi), encoding="utf-8")
    directory = HERE / "slant" / "SOC_40classes" / "train" / "Buick_Excelle_GT"
    directory.mkdir(parents=True)
    name = "KU_HH_15_30_000003"
    quad = {key: ((rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))) * (k + 1)).astype(np.complex64)
            for k, key in enumerate(("data_hh", "data_hv", "data_vh", "data_vv"))}
    scipy.io.savemat(directory / f"{name}.mat", quad)
    data = bytearray((directory / f"{name}.mat").read_bytes())
    data[:116] = b"MATLAB 5.0 MAT-file, written by tests/data fixture generator".ljust(116, b" ")
    (directory / f"{name}.mat").write_bytes(bytes(data))
    (directory / f"{name}.xml").write_text(SLANT_XML.format(name=name), encoding="utf-8")


if __name__ == "__main__":
    main()
