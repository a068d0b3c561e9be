"""The working tier (`pytest -m "not slow"`, about 5 minutes on 2 cores) and what it leaves to the
full run (the README's command, CI). Marked here, in one place, beside the `slow` marks in the
test modules and the family x setting grids of tests/grid.py:

- FULL_RUN_ONLY: tests (node-id prefixes) that cost the working tier the most and whose module
  keeps a cheaper test of the same code in it (the reason is written beside each);
- ONE_CASE: parametrized tests whose first case stands for the rest in the working tier.

tests/test_tiers.py checks that every entry names a test that exists, and that every test module
keeps at least one test in the working tier."""

from __future__ import annotations

import pytest

FULL_RUN_ONLY = {
    "tests/profiler/test_measure.py::test_max_batch_is_exact_and_repeatable": "35 s; the search: test_maxbatch, test_trace_cache",
    "tests/profiler/test_maxbatch.py::test_search_stays_exact_after_real_ooms": "21 s; the search's unit tests stay",
    "tests/profiler/test_trace_cache.py::test_the_seeded_search_finds_what": "15-25 s; the search's unit tests stay",
    "tests/profiler/test_trace_cache.py::test_a_job_searches_from_its_sweep": "16 s; the cache's job-level test stays",
    "tests/profiler/test_parallel.py::test_max_batch_per_rank_through_the_runner": "15 s; rank 0's trace stays",
    "tests/profiler/test_cli.py::test_run_minimal_spec_writes_the_contract": "15 s; the runner's child process stays",
    "tests/profiler/test_compile.py::test_a_compiled_job_measures_the_compiled_step": "11 s; compiling a trial stays",
    "tests/profiler/test_compile.py::test_a_failed_compiled_trial_leaves_nothing_alive": "7 s; as above",
    "tests/profiler/test_new_methods.py::test_estimate_of_every_new_method": "7 s; cpu rows of the new methods stay",
    "tests/profiler/test_producers.py::test_memory_attribution_through_the_runner": "7 s; test_attribution stays",
    "tests/test_gpu_suite.py::test_a_cut_step_time_part_keeps_its_timed_methods": "45 s; the step-time JSON test stays",
    "tests/test_gpu_suite.py::test_budget_skips_what_would_not_fit": "6 s; the plan's windows stay",
}

ONE_CASE = {
    "tests/profiler/test_estimate_vs_gpu.py::test_estimate_matches_gpu",
    "tests/profiler/test_measure.py::test_estimate_matches_the_cpu_allocator",
    "tests/profiler/test_measure.py::test_breakdown_is_the_composition_at_the_peak",
    "tests/profiler/test_measure.py::test_bf16_weights_halve_parameters_and_the_estimate_matches",
    "tests/profiler/test_measure.py::test_saved_tensors_are_activations_for_every_method",
    "tests/profiler/test_measure.py::test_each_adamw_implementation_is_traced_and_measured",
    "tests/profiler/test_measure.py::test_bf16_autocast",
    "tests/profiler/test_parallel.py::test_ranks_that_built_different_models_are_refused",
    "tests/profiler/test_attribution.py::test_modules_add_up_to_the_rows_activation_bytes",
    "tests/profiler/test_attribution.py::test_sampled_linears_keep_less_than_full_ones",
    "tests/profiler/test_new_methods.py::test_meft_on_other_families_in_the_estimate",
    "tests/wtacrs/test_compile.py::test_the_preset_compiles_to_eager_gradients",
    "tests/wtacrs/test_compile.py::test_the_preset_without_its_attention_compiles_to_eager_gradients",
    "tests/wtacrs/test_kernels.py::test_cuda_implementations_in_the_interpreter",
    "tests/wtacrs/test_savers.py::test_memeff_attention_gradcheck",
    # sqlite first: the browser's view of a page is the same on either store
    "tests/app/test_adversarial_pages.py::test_every_page_runs_nothing_a_client_stored",
    "tests/app/test_adversarial_pages.py::test_escaping_alone_keeps_stored_markup_inert",
    "tests/app/test_adversarial_pages.py::test_the_token_stays_in_the_tab_and_docs_can_send_it",
}

# modules of the full run only, each a whole-system run of what per-module tests cover piecewise
FULL_RUN_MODULES = {
    "tests/test_e2e.py": "the server, workers and CLI as processes (kills, restarts)",
    "tests/app/test_fuzz.py": "property-based requests against every route",
    "tests/app/test_stateful.py": "property-based sequences of queue operations",
    "tests/app/test_generated_specs.py": "generated specs run end to end by a worker",
    "tests/app/test_parallel_jobs.py": "multi-rank jobs through the server",
}


def mark(items) -> None:
    """Mark slow what the working tier leaves to the full run (collection order decides 'first')."""
    slow = pytest.mark.slow
    first: set[str] = set()
    for item in items:
        test = item.nodeid.split("[")[0]
        if any(item.nodeid.startswith(prefix) for prefix in FULL_RUN_ONLY):
            item.add_marker(slow)
        elif test in ONE_CASE and "[" in item.nodeid and item.get_closest_marker("slow") is None:
            if test in first:
                item.add_marker(slow)
            first.add(test)
