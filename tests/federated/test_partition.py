"""Client partitions: by site, Dirichlet label skew and group skew — by patient, seeded, with clear errors."""

import numpy as np
import pandas as pd
import pytest

from fairfm.errors import InputError
from fairfm.federated.partition import assign_clients


def make_table(n_patients=600, seed=0, sites=None):
    """A SampleTable-like frame: 1–3 rows per patient, a patient-level split, label and sex per patient."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 4, n_patients)
    patient = np.repeat(np.arange(n_patients), rows)
    split = rng.choice(["train", "val", "test"], n_patients, p=[0.6, 0.2, 0.2])[patient]
    sex = rng.choice(["F", "M"], n_patients, p=[0.4, 0.6])[patient]
    label = (rng.random(n_patients) < 0.35).astype(float)[patient]
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(patient.size)],
        "patient_id": [f"p{p}" for p in patient],
        "path": [f"images/{i}.png" for i in range(patient.size)],
        "label_disease": label,
        "group_sex": sex,
        "split": split,
    })
    if sites is not None:
        frame["site"] = np.asarray(sites)[patient % len(sites)]
    return frame


def tv_from_pooled(table, partition, column="label_disease"):
    """Mean total-variation distance of the clients' value distributions from the pooled one."""
    values = table[column].astype(str).to_numpy()
    cats = np.unique(values)
    pooled = np.array([(values == c).mean() for c in cats])
    tvs = []
    for k in range(len(partition.clients)):
        mine = values[partition.assignment == k]
        dist = np.array([(mine == c).mean() for c in cats])
        tvs.append(0.5 * np.abs(dist - pooled).sum())
    return float(np.mean(tvs))


@pytest.mark.parametrize("by", ["dirichlet_label", "dirichlet_group"])
def test_patient_never_split_and_every_row_assigned(by):
    table = make_table()
    part = assign_clients(table, by=by, n_clients=3, alpha=1.0, seed=3, attribute="sex")
    assert part.clients == ["client_0", "client_1", "client_2"]
    assert part.assignment.shape == (len(table),) and set(part.assignment) == {0, 1, 2}
    per_patient = pd.Series(part.assignment).groupby(table["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    # the split column is untouched and every client has both classes in every split
    for k in range(3):
        rows = table.iloc[part.rows(k)]
        for split in ("train", "val", "test"):
            assert set(rows.loc[rows["split"] == split, "label_disease"]) == {0.0, 1.0}
    counts = part.description["counts"]
    assert sum(counts[c][s].get("1", 0) for c in part.clients for s in ("train", "val", "test")) == \
        int(table["label_disease"].sum())
    assert part.description["by"] == by and part.description["alpha"] == 1.0 and part.description["seed"] == 3
    if by == "dirichlet_group":
        group_counts = part.description["group_counts"]
        women = sum(group_counts[c][s].get("F", 0) for c in part.clients for s in ("train", "val", "test"))
        assert women == int((table["group_sex"] == "F").sum())


def test_deterministic_under_the_seed():
    table = make_table()
    a = assign_clients(table, by="dirichlet_label", n_clients=4, alpha=0.5, seed=11)
    b = assign_clients(table, by="dirichlet_label", n_clients=4, alpha=0.5, seed=11)
    c = assign_clients(table, by="dirichlet_label", n_clients=4, alpha=0.5, seed=12)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert a.description == b.description
    assert not np.array_equal(a.assignment, c.assignment)
    # the row order of the table does not matter: each patient lands at the same client
    shuffled = table.sample(frac=1.0, random_state=0)
    d = assign_clients(shuffled, by="dirichlet_label", n_clients=4, alpha=0.5, seed=11)
    by_patient_a = dict(zip(table["patient_id"], a.assignment))
    assert all(by_patient_a[p] == k for p, k in zip(shuffled["patient_id"], d.assignment))


@pytest.mark.parametrize("by,column", [("dirichlet_label", "label_disease"),
                                       ("dirichlet_group", "group_sex")])  # fmt: skip
def test_small_alpha_skews_more_than_large(by, column):
    table = make_table(n_patients=3000, seed=1)
    skew = {}
    for alpha in (0.3, 100.0):
        parts = [assign_clients(table, by=by, n_clients=3, alpha=alpha, seed=s, attribute="sex",
                                min_per_client=0) for s in range(6)]  # fmt: skip
        tvs = [tv_from_pooled(table, part, column) for part in parts]
        skew[alpha] = np.mean(tvs)
    assert skew[0.3] > 3 * skew[100.0], skew
    assert skew[100.0] < 0.05


def test_site_passthrough():
    table = make_table(sites=["siteB", "siteA", "siteC"])
    part = assign_clients(table, by="site")
    assert part.clients == ["siteA", "siteB", "siteC"]
    names = np.asarray(part.clients)[part.assignment]
    np.testing.assert_array_equal(names, table["site"].to_numpy())
    assert part.description["by"] == "site" and part.description["task"] == "disease"
    assert part.description["counts"]["siteA"]["train"]["0"] == int(
        ((table["site"] == "siteA") & (table["split"] == "train") & (table["label_disease"] == 0)).sum())
    with pytest.raises(InputError, match="n_clients 2 differs from the table's 3 sites"):
        assign_clients(table, by="site", n_clients=2)


def test_site_errors():
    table = make_table()
    with pytest.raises(InputError, match="no 'site' column; its columns: sample_id, patient_id"):
        assign_clients(table, by="site")
    table = make_table(sites=["a", "b"])
    table.loc[[4, 7], "site"] = [None, " "]
    with pytest.raises(InputError, match=r"blank or unknown in 2 row\(s\), e.g. rows \[4, 7\]"):
        assign_clients(table, by="site")
    table = make_table(sites=["a", "b"])
    first_patient = table["patient_id"] == "p0"
    table.loc[first_patient, "patient_id"] = "p1"  # p0's rows now belong to p1, which is at the other site
    with pytest.raises(InputError, match="patient 'p1' has rows at more than one site"):
        assign_clients(table, by="site")
    tiny = make_table(n_patients=8, sites=["a", "b"])
    with pytest.raises(InputError, match="every client needs train, val and test rows of both classes"):
        assign_clients(tiny, by="site")


def test_dirichlet_errors():
    table = make_table(n_patients=60)
    with pytest.raises(InputError, match="larger alpha or fewer clients"):
        assign_clients(table, by="dirichlet_label", n_clients=8, alpha=0.05, seed=0)
    with pytest.raises(InputError, match="at least 2 clients"):
        assign_clients(table, by="dirichlet_label", n_clients=1)
    with pytest.raises(InputError, match="alpha"):
        assign_clients(table, by="dirichlet_label", n_clients=2, alpha=0)
    with pytest.raises(InputError, match="needs an attribute.*sex"):
        assign_clients(table, by="dirichlet_group", n_clients=2)
    with pytest.raises(InputError, match="attribute 'race' has no column 'group_race'"):
        assign_clients(table, by="dirichlet_group", n_clients=2, attribute="race")
    with pytest.raises(InputError, match="task 'edema' has no column"):
        assign_clients(table, by="dirichlet_label", n_clients=2, task="edema")
    with pytest.raises(InputError, match="expected one of site, dirichlet_label, dirichlet_group"):
        assign_clients(table, by="iid", n_clients=2)
    with pytest.raises(InputError, match="lacks column\\(s\\) split"):
        assign_clients(table.drop(columns="split"), by="dirichlet_label", n_clients=2)
