"""The measurement registry is complete: every entry has a producer, a result list, CLI columns
that exist on its row model, and job-page charts that exist."""

import pytest
from pydantic import ValidationError

from contract.measurements import FIELDS, MEASUREMENTS
from contract.results import JobResult, JobRows
from contract.rows import TrialRow
from contract.spec import JobSpec


@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_every_measurement_is_wired(name):
    from app.web.job_charts import JOB_CHARTS
    from profiler.producers.registry import PRODUCERS

    m = MEASUREMENTS[name]
    assert name in PRODUCERS, f"{name} has no producer in profiler/producers.py"
    assert m.field in JobRows.model_fields and FIELDS[m.field] is m.row
    for column in m.columns:
        assert column.field in m.row.model_fields, f"{name}: column {column.header!r} reads no field of {m.row}"
    for chart in m.charts:
        assert chart in JOB_CHARTS, f"{name}: chart {chart!r} is not in app/web/job_charts.py"
    assert m.estimate or m.why_not_estimate, "a measurement refused in estimate mode says why"


def test_estimate_refusals_come_from_the_registry():
    base = {"model": "bert-tiny", "methods": ["full"], "seq_len": 8, "batch_sizes": [1], "device": "estimate"}
    for name, m in MEASUREMENTS.items():
        if not m.estimate and name != "convergence":  # convergence is refused earlier, for its model
            with pytest.raises(ValidationError, match=m.why_not_estimate):
                JobSpec.model_validate({**base, "measurements": [name]})


def test_a_row_missing_what_identifies_it_is_refused_with_the_field_named():
    with pytest.raises(ValidationError, match="batch_size"):
        JobResult.model_validate(
            {"id": "j", "status": "succeeded", "spec": {}, "results": [{"method": "full", "mode": "cpu"}]}
        )
    with pytest.raises(ValidationError, match="status"):
        JobResult.model_validate({"id": "j", "status": "done", "spec": {}})


def test_rows_keep_fields_this_version_does_not_know():
    row = TrialRow.model_validate({"method": "full", "batch_size": 2, "mode": "cuda", "alloc_retries": 3})
    assert row.model_dump()["alloc_retries"] == 3
