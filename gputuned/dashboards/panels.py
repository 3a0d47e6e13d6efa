"""The pieces every gputuned dashboard is made of, on top of grafana-foundation-sdk.

One place decides the datasource, the variables, the label selectors, the links between
the dashboards and the panel numbering, so the three dashboards cannot drift apart.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as viz
from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.builders import prometheus, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

TAG = "gputuned"
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors: `INSTANCE` for the host's series, `GPU` for per-GPU series, `WORKER` for
# per-worker series (every gputuned_worker_*, gputuned_tuner_* and gputuned_knob_value).
INSTANCE = 'instance=~"$instance"'
GPU = 'instance=~"$instance", gpu=~"$gpu"'
WORKER = 'instance=~"$instance", worker=~"$worker"'
WORKER_GPU = 'instance=~"$instance", worker=~"$worker", gpu=~"$gpu"'
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    """A range query drawn over time."""
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range().datasource(DATASOURCE)


def table_query(expr: str, ref_id: str) -> prometheus.Dataquery:
    """An instant query whose result is a table (one row per series)."""
    return prometheus.Dataquery().expr(expr).ref_id(ref_id).instant().format(PromQueryFormat.TABLE).datasource(DATASOURCE)


def graph(
    title: str,
    description: str,
    unit: str,
    queries: list[tuple[str, str]],
    *,
    width: int = 8,
    height: int = 8,
    maximum: float | None = None,
    minimum: float | None = 0,
) -> timeseries.Panel:
    """A time-series panel: `queries` are (expr, legend) pairs, lettered A, B, ..."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            viz.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(viz.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
        .targets([query(expr, legend, chr(ord("A") + index)) for index, (expr, legend) in enumerate(queries)])
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def dashed_red(series: str) -> tuple[model.MatcherConfig, list[model.DynamicConfigValue]]:
    """An override drawing the series whose names match the regular expression `series` as red
    dashed lines: limits, not measurements."""
    return (
        model.MatcherConfig(id_val="byRegexp", options=series),
        [
            model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
            model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        ],
    )


def column(name: str, header: str, unit: str) -> tuple[str, list[model.DynamicConfigValue]]:
    """A table column override: the merged field `name` shown as `header` in `unit`."""
    return name, [
        model.DynamicConfigValue(id_val="displayName", value=header),
        model.DynamicConfigValue(id_val="unit", value=unit),
    ]


def fleet_table(title: str, description: str, columns: list[tuple[str, str, str]]) -> table.Panel:
    """One row per instance and worker: `columns` are (instant expr by instance and worker, header,
    unit), merged on both."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(24)
        .height(10)
        .targets([table_query(expr, chr(ord("A") + index)) for index, (expr, _, _) in enumerate(columns)])
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True, "job": True}, "indexByName": {"instance": 0, "worker": 1}},
            )
        )
        .override_by_name("instance", [model.DynamicConfigValue(id_val="displayName", value="Instance")])
        .override_by_name("worker", [model.DynamicConfigValue(id_val="displayName", value="Worker")])
    )
    for index, (_, header, unit) in enumerate(columns):
        panel = panel.override_by_name(*column(f"Value #{chr(ord('A') + index)}", header, unit))
    return panel


def label_variable(
    name: str, label: str, query: str, *, sort: model.VariableSort = model.VariableSort.ALPHABETICAL_ASC, multi: bool = True
) -> sdk.QueryVariable:
    """A dashboard variable over a label's values ("All" matches every value)."""
    return (
        sdk.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(sort)
        .multi(multi)
        .include_all(True)
        .all_value(".*")
    )


class Board:
    """A dashboard under construction: numbers its panels and lays them out row by row."""

    def __init__(self, uid: str, title: str, description: str, *, gpu_variable_multi: bool = True) -> None:
        self._next_id = 1
        self.builder = (
            sdk.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .time("now-1h", "now")
            .refresh("10s")
            .timezone(common.TimeZoneBrowser)
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .with_variable(sdk.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            .with_variable(label_variable("instance", "Instance", "label_values(gputuned_sample_age_seconds, instance)"))
            .with_variable(
                label_variable(
                    "gpu",
                    "GPU",
                    'label_values(gputuned_gpu_info{instance=~"$instance"}, gpu)',
                    sort=model.VariableSort.NUMERICAL_ASC,
                    multi=gpu_variable_multi,
                )
            )
            .with_variable(
                label_variable("worker", "Worker", 'label_values(gputuned_worker_info{instance=~"$instance"}, worker)')
            )
            .link(
                sdk.DashboardLink("gputuned")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(False)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def row(self, title: str) -> Board:
        self.builder = self.builder.with_row(sdk.Row(title).id(self._take_id()))
        return self

    def add(self, *panels: cogbuilder.Builder[model.Panel]) -> Board:
        for panel in panels:
            self.builder = self.builder.with_panel(panel.id(self._take_id()))  # type: ignore[attr-defined]
        return self

    def annotate(self, annotation: sdk.AnnotationQuery) -> Board:
        self.builder = self.builder.annotation(annotation)
        return self

    def build(self) -> model.Dashboard:
        return self.builder.build()

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
