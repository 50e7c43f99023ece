"""Official GlaS (BMP pairs + Grade.csv) and MoNuSeg (TIFF + Aperio XML) downloads and their conversion."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ablation.cli
from ablation.data import load_prepared
from ablation.data.official import convert, parse_aperio_xml, rasterise_polygons
from ablation.errors import AblationError

GRADE_HEADER = "name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"


def write_glas_official(root: Path, size: int = 16) -> dict[str, np.ndarray]:
    """train_1..3, testA_1..2, testB_1 BMP pairs with known instance ids, and Grade.csv; returns the ids."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids_by_name = {}
    for index, name in enumerate(["train_1", "train_2", "train_10", "testA_1", "testA_2", "testB_1"]):
        ids = np.zeros((size, size), dtype=np.uint8)
        ids[1:5, 2:7] = 1
        ids[8:12, 3:9] = 2
        ids[10:15, 11 - index % 3 : 15] = 3 + index  # a third gland with a varying id
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{name}.bmp")
        Image.fromarray(ids).save(root / f"{name}_anno.bmp")
        ids_by_name[name] = ids
    lines = [GRADE_HEADER] + [
        f"{name},{i},{'benign' if i % 2 else ' malignant'},x" for i, name in enumerate(ids_by_name)
    ]
    (root / "Grade.csv").write_text("\n".join(lines) + "\n")
    return ids_by_name


# Polygons in (X = column, Y = row) with float coordinates, and the pixels they cover (rows, columns inclusive).
NUCLEI = [
    ([(2.0, 1.0), (9.0, 1.0), (9.0, 4.0), (2.0, 4.0)], (slice(1, 5), slice(2, 10))),
    ([(14.0, 6.0), (21.0, 6.0), (21.0, 13.0), (14.0, 13.0)], (slice(6, 14), slice(14, 22))),
    ([(18.0, 10.0), (23.0, 10.0), (23.0, 15.0), (18.0, 15.0)], (slice(10, 16), slice(18, 24))),  # overlaps #2
]


def aperio_xml(polygons: list[list[tuple[float, float]]]) -> str:
    regions = []
    for i, polygon in enumerate(polygons, start=1):
        vertices = "".join(f'<Vertex X="{x:.4f}" Y="{y:.4f}" Z="0" />' for x, y in polygon)
        regions.append(f'<Region Id="{i}" Type="0"><Attributes/><Vertices>{vertices}</Vertices></Region>')
    return (
        '<?xml version="1.0"?><Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Attributes/>'
        f"<Regions><RegionAttributeHeaders/>{''.join(regions)}</Regions><Plots/></Annotation></Annotations>"
    )


def expected_nuclei(shape: tuple[int, int]) -> np.ndarray:
    ids = np.zeros(shape, dtype=np.int32)
    for number, (_, pixels) in enumerate(NUCLEI, start=1):
        ids[pixels] = number  # later regions overwrite earlier ones
    return ids


def write_monuseg_image(image_dir: Path, xml_dir: Path, name: str, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # 24 wide, 16 high
    Image.fromarray(image).save(image_dir / f"{name}.tif")
    polygons = [polygon for polygon, _ in NUCLEI] + [[(1.0, 14.0), (3.0, 14.0)]]  # a 2-vertex region: skipped
    (xml_dir / f"{name}.xml").write_text(aperio_xml(polygons))
    return image


def test_rasterise_aperio_polygons(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(aperio_xml([polygon for polygon, _ in NUCLEI]))
    polygons = parse_aperio_xml(tmp_path / "a.xml")
    assert len(polygons) == 3 and polygons[0].shape == (4, 2) and polygons[0][1].tolist() == [9.0, 1.0]
    assert np.array_equal(rasterise_polygons(polygons, (16, 24)), expected_nuclei((16, 24)))


def test_convert_glas_official(tmp_path: Path) -> None:
    ids_by_name = write_glas_official(tmp_path / "raw")
    counts = convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "GlaS")
    assert counts == {"train": 3, "test": 3}
    test_names = sorted(p.stem for p in (tmp_path / "GlaS" / "Test_Folder" / "img").iterdir())
    assert test_names == ["testA_1", "testA_2", "testB_1"]
    for name, ids in ids_by_name.items():
        folder = tmp_path / "GlaS" / ("Train_Folder" if name.startswith("train") else "Test_Folder")
        label = np.asarray(Image.open(folder / "labelcol" / f"{name}.png"))
        instances = np.asarray(Image.open(folder / "instances" / f"{name}.png"))
        source = np.asarray(Image.open(tmp_path / "raw" / f"{name}.bmp"))
        assert np.array_equal(label, np.where(ids > 0, 255, 0)) and np.array_equal(instances, ids)
        assert np.array_equal(np.asarray(Image.open(folder / "img" / f"{name}.png")), source)
    with (tmp_path / "GlaS" / "Grade.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["name", "patient ID", "grade (GlaS)", "grade (Sirinukunwattana et al. 2015)"]
    assert rows[0]["grade (GlaS)"] == "malignant" and len(rows) == 6
    prepared = load_prepared(str(tmp_path / "GlaS"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "instance"
    assert prepared.splits["train"].names == ["train_1", "train_2", "train_10"]
    assert prepared.splits["test"].names == ["testA_1", "testA_2", "testB_1"]
    assert np.array_equal(prepared.splits["train"].instances[2], ids_by_name["train_10"])
    with pytest.raises(AblationError, match="Train_Folder already exists: .*--force"):
        convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "GlaS")
    assert convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "GlaS", overwrite=True)


def test_convert_monuseg_training_and_test_downloads(tmp_path: Path, monkeypatch, capsys) -> None:
    training = tmp_path / "MoNuSegTrainingData"
    (training / "Tissue Images").mkdir(parents=True)
    (training / "Annotations").mkdir()
    images = {}
    for seed, name in enumerate(["TCGA-A", "TCGA-B", "TCGA-C"]):
        images[name] = write_monuseg_image(training / "Tissue Images", training / "Annotations", name, seed)
    testing = tmp_path / "MoNuSegTestData"
    testing.mkdir()
    images["TCGA-T"] = write_monuseg_image(testing, testing, "TCGA-T", 9)
    target = tmp_path / "MoNuSeg"
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    argv = ["data", "convert", "--from", str(training), "--layout", "monuseg-official", "--to", str(target)]
    assert ablation.cli.main(argv) == 0
    assert "wrote train 3 images" in capsys.readouterr().out
    assert convert(testing, layout="monuseg-official", target=target) == {"test": 1}
    expected = expected_nuclei((16, 24))
    for name, image in images.items():
        folder = target / ("Test_Folder" if name == "TCGA-T" else "Train_Folder")
        assert np.array_equal(np.asarray(Image.open(folder / "img" / f"{name}.png")), image)
        assert np.array_equal(np.asarray(Image.open(folder / "instances" / f"{name}.png")), expected)
        assert np.array_equal(
            np.asarray(Image.open(folder / "labelcol" / f"{name}.png")), (expected > 0) * 255
        )
    assert convert(testing, layout="monuseg-official", target=target, split="val") == {"val": 1}
    prepared = load_prepared(str(target), img_size=16, cache_dir=tmp_path / "cache")
    assert [len(prepared.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert prepared.label_kind == "instance" and prepared.splits["test"].instances.max() == 3


def _monuseg_flat(root: Path) -> None:
    root.mkdir()
    write_monuseg_image(root, root, "TCGA-A", 0)


def _tif_without_xml(root: Path) -> str:
    _monuseg_flat(root)
    (root / "TCGA-A.xml").unlink()
    return "image .*TCGA-A.tif has no mask: expected .*TCGA-A.xml"


def _xml_without_tif(root: Path) -> str:
    _monuseg_flat(root)
    (root / "TCGA-A.tif").unlink()
    return "mask .*TCGA-A.xml has no image"


def _broken_xml(root: Path) -> str:
    _monuseg_flat(root)
    (root / "TCGA-A.xml").write_text("<Annotations><Region>")
    return "cannot read annotation file .*TCGA-A.xml"


def _vertex_without_y(root: Path) -> str:
    _monuseg_flat(root)
    (root / "TCGA-A.xml").write_text('<Annotations><Region><Vertex X="1"/></Region></Annotations>')
    return "annotation file .*TCGA-A.xml: a Vertex lacks numeric X and Y"


def _corrupt_tif(root: Path) -> str:
    _monuseg_flat(root)
    (root / "TCGA-A.tif").write_bytes(b"II*\x00garbage")
    return "cannot read image file .*TCGA-A.tif"


def _empty_folder(root: Path) -> str:
    root.mkdir()
    return "holds no MoNuSeg images"


def _missing_folder(root: Path) -> str:
    return "folder .*raw does not exist"


def _file_instead_of_folder(root: Path) -> str:
    root.write_text("not a folder")
    return "raw is a file, not a folder: give the folder of the official download"


@pytest.mark.parametrize(
    "spoil",
    [
        _tif_without_xml,
        _xml_without_tif,
        _broken_xml,
        _vertex_without_y,
        _corrupt_tif,
        _empty_folder,
        _missing_folder,
        _file_instead_of_folder,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_monuseg_bad_input(tmp_path: Path, monkeypatch, capsys, spoil) -> None:
    expected = spoil(tmp_path / "raw")
    with pytest.raises(AblationError, match=expected):
        convert(tmp_path / "raw", layout="monuseg-official", target=tmp_path / "out")
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    argv = ["data", "convert", "--from", str(tmp_path / "raw"), "--layout", "monuseg-official", "--to", "x"]
    assert ablation.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_glas_bad_input(tmp_path: Path) -> None:
    write_glas_official(tmp_path / "raw")
    (tmp_path / "raw" / "testA_2_anno.bmp").unlink()
    with pytest.raises(AblationError, match="image .*testA_2.bmp has no mask: expected .*testA_2_anno.bmp"):
        convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "out")
    (tmp_path / "raw" / "testA_2.bmp").unlink()
    (tmp_path / "raw" / "train_2.bmp").unlink()
    with pytest.raises(AblationError, match="mask .*train_2_anno.bmp has no image"):
        convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "out")
    (tmp_path / "raw" / "train_2_anno.bmp").unlink()
    Image.new("L", (5, 5)).save(tmp_path / "raw" / "train_1_anno.bmp")
    with pytest.raises(AblationError, match="mask .*train_1_anno.bmp is 5x5 but its image is 16x16"):
        convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "out")
    with pytest.raises(AblationError, match="--split applies to monuseg-official only"):
        convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "out", split="val")


def test_glas_files_with_other_names_are_reported(tmp_path: Path, capsys) -> None:
    write_glas_official(tmp_path / "raw")
    for name in ["notes.bmp", "train_1_copy.bmp", "Train_3.bmp", "a.bmp", "b.bmp", "c.bmp"]:
        Image.new("RGB", (4, 4)).save(tmp_path / "raw" / name)
    assert convert(tmp_path / "raw", layout="glas-official", target=tmp_path / "out") == {
        "train": 3,
        "test": 3,
    }
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: skipped 6 .bmp file(s) in ")
    assert err.rstrip().endswith("a.bmp, b.bmp, c.bmp, notes.bmp, train_1_copy.bmp and 1 more")
    only_others = tmp_path / "others"
    only_others.mkdir()
    Image.new("RGB", (4, 4)).save(only_others / "slide 1.bmp")
    with pytest.raises(
        AblationError, match=r"holds no GlaS files .*its .bmp files \(slide 1.bmp\) do not follow"
    ):
        convert(only_others, layout="glas-official", target=tmp_path / "out2")


def test_convert_target_that_is_a_file_is_refused_up_front(tmp_path: Path, monkeypatch, capsys) -> None:
    write_glas_official(tmp_path / "raw")
    blocker = tmp_path / "afile.txt"
    blocker.write_text("x")
    with pytest.raises(AblationError, match=f"--to {blocker} is a file, not a folder"):
        convert(tmp_path / "raw", layout="glas-official", target=blocker)
    with pytest.raises(AblationError, match=f"--to {blocker}/GlaS cannot be made: {blocker} is a file"):
        convert(tmp_path / "raw", layout="glas-official", target=blocker / "GlaS")
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    argv = [
        "data",
        "convert",
        "--from",
        str(tmp_path / "raw"),
        "--layout",
        "glas-official",
        "--to",
        str(blocker),
    ]
    assert ablation.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --to ") and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_unknown_layout_and_split(tmp_path: Path, monkeypatch, capsys) -> None:
    with pytest.raises(
        AblationError, match="unknown layout 'kaggle': choose one of glas-official, monuseg-official"
    ):
        convert(tmp_path, layout="kaggle", target=tmp_path / "out")
    _monuseg_flat(tmp_path / "raw")
    with pytest.raises(AblationError, match="unknown split 'dev': choose one of train, val, test"):
        convert(tmp_path / "raw", layout="monuseg-official", target=tmp_path / "out", split="dev")
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    assert ablation.cli.main(["data", "convert", "--from", ".", "--layout", "kaggle", "--to", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown layout 'kaggle'")
