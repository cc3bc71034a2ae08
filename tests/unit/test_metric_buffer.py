"""Buffered metric updates end up exactly as direct prometheus-client updates would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from platform_tasks.observability import metric_buffer

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in registry.collect() for sample in metric.samples
            if not sample.name.endswith("_created")}


def test_buffered_histogram_counter_and_gauge_flush_to_what_direct_updates_give() -> None:
    direct, buffered = CollectorRegistry(), CollectorRegistry()

    def metrics(registry: CollectorRegistry) -> tuple[Histogram, Counter, Gauge]:
        return (Histogram("runtime", "h", ("q",), buckets=BUCKETS, registry=registry),
                Counter("done", "c", ("q",), registry=registry),
                Gauge("in_flight", "g", ("q",), registry=registry))

    histogram, counter, gauge = metrics(direct)
    b_histogram, b_counter, b_gauge = metrics(buffered)
    wrapped_histogram = metric_buffer.BufferedHistogram(b_histogram.labels("default"))
    wrapped_counter = metric_buffer.BufferedValue(b_counter.labels("default"))
    wrapped_gauge = metric_buffer.BufferedValue(b_gauge.labels("default"))
    values = [random.choice([0.0, *BUCKETS, 10.0]) for _ in range(200)]
    values += [random.uniform(0, 8) for _ in range(500)]
    for amount in values:
        histogram.labels("default").observe(amount)
        wrapped_histogram.observe(amount)
        counter.labels("default").inc()
        wrapped_counter.inc()
        gauge.labels("default").inc()
        wrapped_gauge.inc()
    gauge.labels("default").dec(3)
    wrapped_gauge.dec(3)
    assert samples(buffered)[("in_flight", (("q", "default"),))] == 0  # nothing written yet
    metric_buffer.flush()
    direct_samples, buffered_samples = samples(direct), samples(buffered)
    sums = [key for key in direct_samples if key[0] == "runtime_sum"]
    for key in sums:
        assert abs(direct_samples.pop(key) - buffered_samples.pop(key)) < 1e-6
    assert buffered_samples == direct_samples
    metric_buffer.flush()  # nothing pending: nothing changes
    assert samples(buffered)[("done_total", (("q", "default"),))] == len(values)
