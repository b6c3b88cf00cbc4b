import pytest
import torch
from torch import nn

from metakit.algorithms.nearest import NearestNeighbour
from metakit.algorithms.protonet import ProtoNet
from metakit.models import Conv4
from metakit.runtime.embeddings import (
    embedding_function,
    pca_2d,
    plot_embeddings,
    project_episodes,
    tsne_2d,
)
from metakit.tasks import EpisodeBatch


def _clusters(tasks=2, ways=3, shots=2, queries=3, dim=6, seed=0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(tasks, ways, dim, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    sx = centres.gather(1, sy[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(tasks, ways * shots, dim, generator=g)
    qx = centres.gather(1, qy[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(tasks, ways * queries, dim, generator=g)
    return EpisodeBatch(sx, sy, qx, qy, ways)


def test_pca_by_hand():
    pts = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    coords, kept = pca_2d(pts)
    assert torch.allclose(coords.float(), pts, atol=1e-6) and kept == pytest.approx(1.0)
    # variances 8, 2, 2 (sums of squares) along the axes: two components keep 10/12
    pts3 = torch.tensor([[2.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    assert pca_2d(pts3)[1] == pytest.approx(10 / 12)
    line = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [4.0, 4.0, 4.0]])
    coords, kept = pca_2d(line)
    assert kept == pytest.approx(1.0) and torch.allclose(coords[:, 1], torch.zeros(3, dtype=coords.dtype), atol=1e-9)
    # signed distance along the line from the mean (7/3 along each axis)
    expected = (torch.tensor([1.0, 2.0, 4.0]) - 7 / 3) * 3**0.5
    assert torch.allclose(coords[:, 0].float(), expected, atol=1e-5)
    assert pca_2d(torch.ones(3, 4))[1] == 1.0  # coincident points


def test_tsne_keeps_clusters_apart_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(15, 8, generator=g)
    b = torch.randn(15, 8, generator=g) + 20
    y = tsne_2d(torch.cat([a, b]), steps=300)
    assert y.shape == (30, 2)
    d = torch.cdist(y, y).fill_diagonal_(float("inf"))
    nearest = d.argmin(1)
    assert ((nearest < 15) == (torch.arange(30) < 15)).all()
    assert torch.equal(tsne_2d(torch.cat([a, b]), steps=300), y)
    assert not torch.allclose(tsne_2d(torch.cat([a, b]), steps=300, seed=1), y)  # the seed is used


def test_embedding_function_prefers_embed_then_encoder():
    proto = ProtoNet(nn.Flatten())
    assert embedding_function(proto)(torch.ones(2, 2, 2)).shape == (2, 4)

    class OnlyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Flatten()

    assert embedding_function(OnlyEncoder())(torch.ones(2, 3, 1)).shape == (2, 3)
    with pytest.raises(TypeError, match="Linear has no embed\\(\\) method or encoder module"):
        embedding_function(nn.Linear(2, 2))


def test_project_episodes_shapes_and_modes():
    algo = NearestNeighbour(Conv4(hidden=4))
    algo.train()
    batch = EpisodeBatch(
        torch.randn(3, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 6, 1, 28, 28), torch.tensor([[0, 1, 1, 0, 0, 1]] * 3), 2
    )
    out = project_episodes(algo, batch, max_episodes=2)
    assert len(out) == 2
    assert out[0].support.shape == (4, 2) and out[0].query.shape == (6, 2) and 0 < out[0].explained <= 1
    assert all(m.training for m in algo.modules())  # mode restored
    # projecting support and query together: both come from one PCA of all 10 embeddings
    algo.eval()
    with torch.no_grad():
        coords, _ = pca_2d(algo.embed(torch.cat([batch.support_x[0], batch.query_x[0]])))
    assert torch.allclose(torch.cat([out[0].support, out[0].query]), coords)


def _assert_points_by_class(ax, projection) -> None:
    """Per class: the support stars, then the queries, at the projected coordinates, one colour."""
    collections = ax.collections
    assert len(collections) == 2 * projection.ways
    colours = []
    for k in range(projection.ways):
        support, query = collections[2 * k], collections[2 * k + 1]
        assert torch.allclose(torch.as_tensor(support.get_offsets().data).float(), projection.support[projection.support_y == k].float())
        assert torch.allclose(torch.as_tensor(query.get_offsets().data).float(), projection.query[projection.query_y == k].float())
        assert (support.get_facecolor()[0][:3] == query.get_facecolor()[0][:3]).all()  # RGB; queries are translucent
        colours.append(tuple(support.get_facecolor()[0][:3]))
    assert len(set(colours)) == projection.ways


def test_plot_draws_each_episode_projection(tmp_path, saved_figures):
    batch = _clusters()
    algo = NearestNeighbour(nn.Identity())
    path = plot_embeddings(algo, batch, tmp_path / "sub" / "emb.png", method="pca", max_episodes=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["emb.png"]  # no temporary file left
    (fig, _), = saved_figures
    projections = project_episodes(algo, batch, "pca", max_episodes=2)
    assert len(fig.axes) == 2 and fig.get_suptitle() == "NearestNeighbour embeddings of test episodes"
    for i, (ax, pr) in enumerate(zip(fig.axes, projections)):
        assert ax.get_title() == f"episode {i + 1}: 3-way 2-shot (PCA, {100 * pr.explained:.0f}% of variance)"
        _assert_points_by_class(ax, pr)
    plot_embeddings(algo, batch, tmp_path / "tsne.png", method="tsne", max_episodes=1, title="t")
    fig, _ = saved_figures[1]
    (ax,) = fig.axes
    assert ax.get_title() == "episode 1: 3-way 2-shot (t-SNE)" and fig.get_suptitle() == "t"
    _assert_points_by_class(ax, project_episodes(algo, batch, "tsne", max_episodes=1)[0])


def test_bad_inputs():
    algo = NearestNeighbour(nn.Identity())
    batch = _clusters()
    with pytest.raises(ValueError, match="method='umap' is not known; use one of: pca, tsne"):
        project_episodes(algo, batch, method="umap")
    with pytest.raises(ValueError, match="max_episodes=0 must be a positive int"):
        project_episodes(algo, batch, max_episodes=0)
    with pytest.raises(TypeError, match="batch must be an EpisodeBatch, got list"):
        project_episodes(algo, [batch])
    reg = EpisodeBatch(torch.zeros(1, 3, 2), torch.zeros(1, 3, 1), torch.zeros(1, 3, 2), torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match="batch.ways is None"):
        project_episodes(algo, reg)
    with pytest.raises(ValueError, match="points has 1 rows; a 2-D projection needs at least 2 points"):
        pca_2d(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"points must be a 2-D tensor \[N, D\], got \(3,\)"):
        pca_2d(torch.zeros(3))
    with pytest.raises(ValueError, match="perplexity=1 must be a number > 1"):
        tsne_2d(torch.randn(5, 2), perplexity=1)
    with pytest.raises(ValueError, match="steps=0 must be a positive int"):
        tsne_2d(torch.randn(5, 2), steps=0)


def test_plot_run_embeddings_errors(tmp_path):
    from metakit.runtime.embeddings import plot_run_embeddings

    with pytest.raises(ValueError, match="episodes=0 must be a positive int"):
        plot_run_embeddings(tmp_path, episodes=0)
    with pytest.raises(FileNotFoundError):
        plot_run_embeddings(tmp_path / "missing")
