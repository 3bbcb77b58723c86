"""The dagster.yaml Dagster's Helm chart writes from deploy/helm/values.yaml, for the sections those
values set, rendered in Python the way the chart's templates render them
(helm/dagster/templates/configmap-instance.yaml and helpers/instance/*.tpl in Dagster's
repository). No helm binary or cluster is needed, so the tests check the instance the chart
would give every pod against the classes' own config schemas. Values the file leaves out take the
chart's defaults (CHART_DEFAULTS)."""

from __future__ import annotations

from typing import Any

RELEASE_NAMESPACE = "dagster"
CHART_DEFAULTS = {
    "dagsterHome": "/opt/dagster/dagster_home",
    "postgresqlSecretName": "dagster-postgresql-secret",
    "k8sRunLauncher": {"loadInclusterConfig": True, "imagePullPolicy": "Always", "jobNamespace": None},
    "serviceAccountName": "dagster",
}


def render_instance(values: dict[str, Any], fullname: str = "backfill-dagster") -> dict[str, Any]:
    pg = values["postgresql"]
    postgres_db = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams", {}),
        **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
    }
    instance: dict[str, Any] = {
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": {"postgres_db": postgres_db}},
        "run_launcher": _run_launcher(values, fullname),
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage",
                        "config": {"postgres_db": postgres_db}},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": {"postgres_db": postgres_db}},
        "compute_logs": _compute_logs(values["computeLogManager"]),
        "telemetry": {"enabled": values.get("telemetry", {}).get("enabled", True)},
    }
    daemon = values["dagsterDaemon"]
    coordinator = daemon.get("runCoordinator", {})
    if coordinator.get("enabled"):
        assert coordinator["type"] == "QueuedRunCoordinator", coordinator["type"]
        instance["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                                       "config": _snake(coordinator["config"].get("queuedRunCoordinator") or {})}
    monitoring = daemon.get("runMonitoring", {})
    if monitoring.get("enabled"):
        instance["run_monitoring"] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        }
    retries = daemon.get("runRetries", {})
    if retries.get("enabled"):
        instance["run_retries"] = {"enabled": True, **({"max_retries": retries["maxRetries"]} if retries.get("maxRetries") else {})}
    logs = values.get("pythonLogs") or {}
    if logs:
        instance["python_logs"] = {
            **({"python_log_level": logs["pythonLogLevel"]} if logs.get("pythonLogLevel") else {}),
            **({"managed_python_loggers": logs["managedPythonLoggers"]} if logs.get("managedPythonLoggers") else {}),
        }
    concurrency = values.get("concurrency") or {}
    if concurrency.get("enabled"):
        instance["concurrency"] = _concurrency(concurrency)
    return instance


def _run_launcher(values: dict[str, Any], fullname: str) -> dict[str, Any]:
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher", launcher["type"]
    k8s = {**CHART_DEFAULTS["k8sRunLauncher"], **launcher["config"]["k8sRunLauncher"]}
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s["jobNamespace"] or RELEASE_NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": CHART_DEFAULTS["serviceAccountName"],
        "dagster_home": values.get("global", {}).get("dagsterHome", CHART_DEFAULTS["dagsterHome"]),
        "instance_config_map": f"{fullname}-instance",
        "postgres_password_secret": values.get("global", {}).get("postgresqlSecretName",
                                                                 CHART_DEFAULTS["postgresqlSecretName"]),
    }
    if k8s.get("kubeconfigFile"):
        config["kubeconfig_file"] = k8s["kubeconfigFile"]
    if k8s.get("envConfigMaps"):
        config["env_config_maps"] = [c["name"] for c in k8s["envConfigMaps"] if "name" in c]
    if k8s.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in k8s["envSecrets"] if "name" in s]
    if k8s.get("envVars"):
        config["env_vars"] = list(k8s["envVars"])
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def _compute_logs(manager: dict[str, Any]) -> dict[str, Any]:
    if manager["type"] == "CustomComputeLogManager":
        custom = manager["config"]["customComputeLogManager"]
        return {"module": custom["module"], "class": custom["class"], "config": custom.get("config") or {}}
    assert manager["type"] == "S3ComputeLogManager", manager["type"]
    s3 = manager["config"]["s3ComputeLogManager"]
    names = {"bucket": "bucket", "localDir": "local_dir", "prefix": "prefix", "useSsl": "use_ssl",
             "verifyCertPath": "verify_cert_path", "endpointUrl": "endpoint_url", "skipEmptyFiles": "skip_empty_files",
             "uploadInterval": "upload_interval", "uploadExtraArgs": "upload_extra_args", "showUrlOnly": "show_url_only",
             "region": "region"}
    config = {names[k]: v for k, v in s3.items() if k in names and v}
    config["verify"] = s3.get("verify") is not False
    return {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager", "config": config}


def _concurrency(concurrency: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pools = concurrency.get("pools") or {}
    if pools:
        out["pools"] = _snake(pools)
    runs = concurrency.get("runs") or {}
    if runs:
        out["runs"] = {
            **({"max_concurrent_runs": runs["maxConcurrentRuns"]} if runs.get("maxConcurrentRuns") is not None else {}),
            **({"tag_concurrency_limits": runs["tagConcurrencyLimits"]} if runs.get("tagConcurrencyLimits") else {}),
        }
    return out


def _snake(values: dict[str, Any]) -> dict[str, Any]:
    return {"".join("_" + c.lower() if c.isupper() else c for c in k): v for k, v in values.items()}
