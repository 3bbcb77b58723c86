"""The Dagster internals this project overrides or relies on, pinned by the hash of their source.

BulkPostgresEventLogStorage (instance/event_log.py) and PooledPostgresRunStorage
(instance/run_storage.py) override dagster-postgres methods and call private ones; the run
launcher (instance/run_launcher.py) answers run monitoring's worker health check; the event log
expands Dagster's subset planned event into the rows Dagster's readers expect; the checks count on how the UI decides that a result is current; the steps compute a
run's partition box as Dagster does. Any of these may change in a Dagster release without notice,
so a changed source fails here, naming what to re-check. The log manager's shortcut
(instance/log_manager.py) mirrors how a record reaches the instance's handler; the status cache
read (instance/cached_status.py) mirrors when Dagster's update of it changes nothing; the backfill daemon's row
cache, target check, subset packing and repr (instance/backfill_rows.py, backfill_validity.py,
subset_pack.py, subset_repr.py) stand in for Dagster's reads, writes and check, and its run
submission lists a box run's keys as strings (backfill_submit.py). After re-checking (and running
tests/instance/test_event_log.py and test_checks.py), record the new hashes with
`python -m tests.orchestration.test_dagster_internals`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib.metadata import version

import dagster_graphql.schema  # noqa: F401  (before its implementation modules, which import each other through it)
import pytest

PINNED_VERSIONS = {"dagster": "1.13.27", "dagster-postgres": "0.29.27"}

# qualified name -> (sha256 of its source, first 16 hex digits; what to re-check if it changed)
INTERNALS: dict[str, tuple[str, str]] = {
    # what the bulk event log overrides
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.__init__":
        ("647dff00b58c1222", "the bulk storage replaces self._engine after super().__init__ and keeps the rest"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.from_config_value":
        ("c2785eb9f98f6f96", "the bulk storage's from_config_value builds itself from the same config keys"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.store_event":
        ("4a2e37e5871bf2c8", "store_event is wrapped in one transaction; every statement must go through _connect"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.store_event_batch":
        ("ff147ed514ba9786", "_write_materializations writes what this writes for materializations (rows, tags, asset-key row)"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage._connect":
        ("a1935b91a983062d", "_connect is overridden to hand out the held transaction's connection"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.index_transaction":
        ("d4018b0dade43e19", "index writes must still go through _connect, inside the held transaction"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.has_table":
        ("78217fbd74d0e09d", "has_table answers are remembered once true"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._has_asset_key_col_on_connection":
        ("981049dfa81d2e47", "column-exists answers are remembered once true"),
    "dagster._core.storage.event_log.base.EventLogStorage.supports_partition_subset_in_asset_materialization_planned_events":
        ("76cf2433710a45ef", "the bulk storage returns True and must then store the subset event as per-partition rows"),
    # what the pooled run storage overrides
    "dagster_postgres.run_storage.run_storage.PostgresRunStorage.__init__":
        ("c20e1fcd1ee52b39", "PooledPostgresRunStorage replaces self._engine after super().__init__"),
    "dagster_postgres.run_storage.run_storage.PostgresRunStorage.from_config_value":
        ("78ffe37ccb0d74b8", "PooledPostgresRunStorage.from_config_value builds itself from the same config keys"),
    "dagster_postgres.run_storage.run_storage.PostgresRunStorage.config_type":
        ("a55f6039e6c59829", "PooledPostgresRunStorage.config_type takes it with postgres_db as written, then processes the section with it"),
    "dagster._core.storage.config.pg_config":
        ("898d95d207844830", "postgres_db's values are what the run storage checks for unset {env: NAME} variables"),
    "dagster_postgres.run_storage.run_storage.PostgresRunStorage.connect":
        ("b76438443325ba8b", "every run-storage statement goes through self._engine"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.has_run_stats_index_cols":
        ("7fc623624093c307", "its answer (the runs table's columns) is remembered once true"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.handle_run_event":
        ("1c95c3b77926acd3", "the worker tags are written before the run's start status, each statement committing alone"),
    # the backfill daemon's backfill rows (instance/backfill_rows.py, PooledPostgresRunStorage)
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.get_backfill":
        ("14270e4d4f79bf35", "a backfill is its bulk_actions row's body deserialized; None when there is no row"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.get_backfills":
        ("756a26fe5371d0e4", "the daemon's version builds the same query (filters, cursor, limit, newest first) "
                             "selecting key and xmin; its refusal of status with filters and its tag re-check are left to it"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.update_backfill":
        ("a558c070d01fd70a", "a write sets status and body; a missing row raises DagsterInvariantViolationError "
                             "'Backfill <id> is not present in storage', which the UPDATE ... RETURNING keeps"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage._backfills_query":
        ("cefcd8ca4e1eb4a9", "its columns are replaced by key and xmin; its filters are kept"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage._add_backfill_filters_to_table":
        ("55cc76052d2b3ce7", "the tag filter joins; the query's FROM is this table"),
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage._add_cursor_limit_to_backfills_query":
        ("fcef83a6fcbe8ca4", "cursor and limit"),
    "dagster._core.storage.runs.schema":
        ("e986ab6339dd3818", "bulk_actions: key, status, body (the row the cache versions by xmin)"),
    "dagster._daemon.controller.DagsterDaemonController.__init__":
        ("7e169163ab8998b8", "each daemon runs in a thread named dagster-daemon-<type> (BACKFILL_DAEMON_THREADS)"),
    "dagster._daemon.daemon.BackfillDaemon.__init__":
        ("1b0bb9374e0b0351", "its pools' threads are prefixed backfill_daemon_worker / backfill_submit_worker"),
    "dagster._daemon.daemon.BackfillDaemon.daemon_type":
        ("a090dc9e2f6b81d4", "the backfill daemon's type is BACKFILL (its thread's name)"),
    "dagster._daemon.backfill.execute_backfill_iteration":
        ("50514b24f01190a9", "every iteration lists the in-progress backfills by status (get_backfills with filters)"),
    # the target check without every key (instance/backfill_validity.py)
    "backfill_dagster.instance.backfill_validity._dagster_check_target_partitions_subset_is_valid":
        ("a5dc68eae67e6dfd", "Dagster's check: its signature, DagsterDefinitionChangedDeserializationError and its "
                             "message for removed partitions, and the cases left to it"),
    "dagster._core.execution.asset_backfill._check_asset_backfill_data_validity":
        ("9912f159a24e6ca2", "it calls _check_target_partitions_subset_is_valid through its module's name, per asset"),
    "dagster._core.definitions.partitions.definition.multi.MultiPartitionsDefinition._get_partition_keys":
        ("bd1bbc2c135c39ca", "a definition's keys are the product of its dimensions' keys, those of a valid format"),
    "dagster._core.definitions.partitions.definition.multi.MultiPartitionsDefinition.is_valid_key_format":
        ("fa9deb022b8f3785", "a key with '|' in a dimension's key is not one of the definition's"),
    # the launch's target check without every key (instance/backfill_validity.py)
    "backfill_dagster.instance.backfill_validity._dagster_get_subset_not_in_graph":
        ("0c11321e2593fddf", "Dagster's check: the candidate's partitions not in subset_with_all_partitions(), "
                             "under the view's partition loading context"),
    "dagster_graphql.implementation.utils.assert_valid_asset_partition_backfill":
        ("1393dfd83108e0b2", "launchPartitionBackfill checks each asset's target through "
                             "AssetGraphView.get_subset_not_in_graph"),
    # the gap sensor's read of unfinished backfills (instance/backfill_selection.py, PooledPostgresRunStorage)
    "dagster._core.storage.runs.sql_run_storage.SqlRunStorage.add_backfill":
        ("788260966d07d45f", "a row's action_type is written with it: the backfill's bulk_action_type"),
    "dagster._core.execution.backfill.PartitionBackfill.bulk_action_type":
        ("a0a751ab7e35a877", "MULTI_RUN_ASSET_ACTION exactly for an asset backfill"),
    "dagster._core.execution.backfill.PartitionBackfill.is_asset_backfill":
        ("8b6ff07ef497471c", "an asset backfill is one with asset backfill data (fixed at creation)"),
    # equal key sets shared within a deserialized row (instance/subset_unpack.py)
    "dagster_shared.serdes.serdes.ObjectSerializer.unpack":
        ("3dd89eabbe0fe163", "the unpacked fields go through the serializer's before_unpack first"),
    "dagster_shared.serdes.serdes.ObjectSerializer.before_unpack":
        ("2e982c7423dc5d60", "Dagster's hook returns the fields as they are"),
    "dagster_shared.serdes.serdes._unpack_object":
        ("4910ec35b825c0ef", "a {'__set__': [...]} is a set when the subset's fields are unpacked (bottom up)"),
    "dagster_shared.serdes.serdes.deserialize_value":
        ("d8d4312713fd3fdb", "one UnpackContext per deserialized value"),
    "dagster_shared.serdes.serdes.deserialize_values":
        ("8d06e2215530b3ec", "one UnpackContext per deserialized value"),
    "dagster._core.definitions.partitions.subset.default.DefaultPartitionsSubset":
        ("f59386112f91b797", "no operation changes a subset's key set in place; each builds a new set"),
    # the short repr of large subsets (instance/subset_repr.py)
    "backfill_dagster.instance.subset_repr._dagster_repr":
        ("4c70f28942dcf028", "Dagster's repr of a DefaultPartitionsSubset, kept for small subsets"),
    # a large subset packed once per key set (instance/subset_pack.py)
    "dagster_shared.serdes.serdes.ObjectSerializer.pack_items":
        ("d8ae47dc560cf3e7", "a DefaultPartitionsSubset's packed items depend only on its key set and the object handler"),
    "dagster_shared.serdes.serdes._LazySerializationWrapper.items":
        ("e047108f773bd96b", "serialize_value reaches an object's items through its serializer's pack_items attribute"),
    "dagster_shared.serdes.serdes._pack_object":
        ("94b478b710d3efed", "pack_value reaches them the same way"),
    "dagster_shared.serdes.serdes._transform_for_serialization":
        ("f225506f6a3edc8a", "a set is packed as its items sorted by str; a str item is itself"),
    # what the worker-checking run launcher (instance/run_launcher.py) relies on
    "dagster._core.launcher.base.RunLauncher.supports_check_run_worker_health":
        ("1d2d7f31b653aa43", "WorkerCheckingRunLauncher answers True and run monitoring then asks it about every STARTED run"),
    "dagster._core.launcher.base.RunLauncher.check_run_worker_health":
        ("13eec872b09e32f3", "WorkerCheckingRunLauncher returns a CheckRunHealthResult of the same shape"),
    "dagster._daemon.monitoring.run_monitoring.monitor_started_run":
        ("bc211672a19dbc70", "a FAILED health result fails the run once, its message naming the dead worker; RUNNING leaves it"),
    "dagster._daemon.auto_run_reexecution.auto_run_reexecution.consume_new_runs_for_automatic_reexecution":
        ("533554c8a635a1b9", "a run whose retry cannot load its code location is never retried: the launcher "
                             "fails a dead worker's run only while its code server answers"),
    "dagster._core.remote_origin.GrpcServerCodeLocationOrigin.create_client":
        ("f238be03f5150f3d", "the launcher pings a run's code location server through it"),
    "dagster._core.execution.asset_backfill._check_validity_of_asset_backfill_data_and_should_process_backfill":
        ("26414e349ff2364b", "with DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR set, a backfill waits for an "
                             "unreachable code location instead of failing (settings.py, the daemon's environment)"),
    "dagster._daemon.monitoring.concurrency.execute_concurrency_slots_iteration":
        ("013ec5d51e2b56f6", "free_slots_after_run_end_seconds (dagster.yaml) gives a killed run's pool slots back"),
    # what it calls privately
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._event_to_row":
        ("93d47fbe7edc4f70", "the columns of an event row (_EVENT_COLUMNS, _PLANNED_PER_PARTITION)"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage.prepare_insert_event_batch":
        ("3a4f48097f682f4f", "planned events without a subset are inserted with it"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._tags_for_asset_event":
        ("c5c3936a8de86826", "which materialization tags get asset_event_tags rows (_COPY_TAGS)"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._store_asset_event_tags":
        ("85d6f17ef04b926f", "the asset_event_tags columns _COPY_TAGS writes"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._event_insert_timestamp":
        ("02e6947ee3f9408a", "timestamps are stored as naive UTC"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage._store_asset_event":
        ("2dc70ccdb0feb5be", "the asset-key row is updated from a batch's last event"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._get_asset_entry_values":
        ("bb3b9df2c6c371fe", "a planned event only sets last_run_id and the timestamp on the asset-key row"),
    "dagster_postgres.event_log.event_log.PostgresEventLogStorage.optimize_for_webserver":
        ("c084cd79114d5e5e", "event_log_tuning.hold_event_log_connection pools the stock storage through it"),
    "dagster_postgres.utils.create_pg_connection": ("fb9aac022adfba2f", "the held transaction's connection"),
    "dagster_postgres.utils.create_pg_engine": ("8bb1e695cf505994", "pooled_engine's arguments"),
    # the planned events the storage expands, and who reads the rows it writes
    "dagster._core.instance.runs.run_domain.RunDomain.get_materialization_planned_events_for_asset":
        ("45e0ef0c58ab5be3", "the subset event is the per-partition events with partition=None and a subset"),
    "dagster._core.instance.runs.run_domain.RunDomain._log_asset_planned_events":
        ("8896f281f5b65b78", "planned events arrive as one batch sorted by asset key, checks included"),
    "dagster._core.events.DagsterEvent.build_asset_materialization_planned_event":
        ("fecc404daf78b250", "a planned event differs per partition only in AssetMaterializationPlannedData.partition"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage.get_latest_asset_partition_materialization_attempts_without_materializations":
        ("ccc3a330429c03bc", "failed and in-progress partitions are read from per-partition planned rows; "
                             "overridden in one query: the latest planned event per partition, dropped when a "
                             "later materialization exists"),
    "dagster._core.storage.partition_status_cache.build_failed_and_in_progress_partition_subset":
        ("3be467aca6662280", "failed and in-progress partition status"),
    "dagster._core.instance.methods.event_methods.EventMethods.handle_new_event":
        ("db900859da5b7e70", "batches go to store_event_batch, a batch of one to store_event; a failed batch is stored "
                             "event by event (WriteBehind.finish does the same)"),
    "dagster._core.storage.event_log.schema":
        ("16ef3a005f5774de", "event_logs.id is a serial column (_NEXT_EVENT_IDS draws from its sequence); the columns and indexes COPY writes"),
    # what the threaded compute-log manager replaces (instance/compute_logs.py)
    "dagster._core.storage.local_compute_log_manager.LocalComputeLogManager.capture_logs":
        ("8f2978767b3208db", "TeeComputeLogManager.capture_logs writes the same two files and the completion artifact"),
    "dagster._core.storage.local_compute_log_manager.LocalComputeLogManager.config_type":
        ("8c86406244f0d11d", "TeeComputeLogManager takes the same config (base_dir made optional)"),
    "dagster._core.storage.local_compute_log_manager.LocalComputeLogManager.__init__":
        ("44cd00358bf5bbc2", "TeeComputeLogManager is built with the same arguments"),
    # the checks: one unpartitioned result per run, current while it targets the latest materialization
    "dagster._core.storage.asset_check_execution_record.AssetCheckExecutionRecord.targets_latest_materialization":
        ("61122bdf7037b2c1", "when the UI shows a run summary as the check's current result (checks.newest_materialization)"),
    "dagster._core.execution.plan.execute_step._process_user_event":
        ("bbcdc6b3e8d0a590", "a check yields its Output then its AssetCheckEvaluation, as Dagster does for AssetCheckResult"),
    # the backfill daemon's log lines (instance/backfill_log.py replaces the subset formatter)
    "dagster._core.execution.asset_backfill._asset_graph_subset_to_str":
        ("fefac79b733c94ee", "backfill logs format every subset through the module's _partition_subset_str"),
    "backfill_dagster.instance.backfill_log._dagster_partition_subset_str":
        ("409cbccdabfa6b41", "Dagster's own formatter (kept for time windows): its signature and what it writes"),
    # batched events handed straight to the instance (instance/log_manager.py): when a record reaches
    # only the instance's handler, and the entry that handler builds from it
    "backfill_dagster.instance.log_manager._dagster_log_dagster_event":
        ("5716c73cdeb7f056", "Dagster's DagsterLogManager.log_dagster_event, which log_manager.log_dagster_event replaces and falls back to"),
    "dagster._core.log_manager.DagsterLogManager.log":
        ("030075aceede930f", "a DagsterEvent is logged whatever the manager's level; nothing else is checked before the handlers"),
    "dagster._core.log_manager.DagsterLogManager.create":
        ("8898d12d066269de", "the run handler's handlers are the instance's (event listener + python_logs handlers) and its loggers the run's"),
    "dagster._core.log_manager.DagsterLogHandler.emit":
        ("9c7021b537b1b5bf", "a record reaches the built-in handlers by level and every @logger; capture is off during emit"),
    "dagster._core.log_manager.DagsterLogHandler.filter":
        ("865967318b52ccd2", "a record logged inside another's emit is dropped (instance_handler then takes Dagster's path)"),
    "dagster._core.log_manager.construct_log_record_metadata":
        ("7d9073c771fc2b82", "the step key of a record: the handler's, else the event's"),
    "dagster._core.instance.types._EventListenerLogHandler.emit":
        ("907f21c814ce69c6", "what is stored: construct_event_record's entry, batch metadata passed on, a failure said and raised"),
    "dagster._core.events.log.construct_event_record":
        ("655b7c8b4d2feb5f", "the EventLogEntry fields log_manager.log_dagster_event fills the same way"),
    "dagster._core.events.log_step_event":
        ("696f61af0ccd941b", "the per-partition materializations are logged with their batch metadata"),
    # the webserver's partitions bar (instance/partition_health.py), installed by optimize_for_webserver
    "backfill_dagster.instance.partition_health._dagster_build_multi_partition_ranges_generic":
        ("75fc6bca28eb93da", "partition_health.build_multi_partition_ranges_generic is this function with each key split, not parsed"),
    "dagster._core.definitions.partitions.definition.multi.MultiPartitionsDefinition.get_partition_key_from_str":
        ("bb212983d19a8250", "a key string is its dimensions' keys joined by '|' in partitions_defs order (secondary_keys_by_primary)"),
    "dagster_graphql.implementation.fetch_assets.get_2d_run_length_encoded_partitions":
        ("9e528909bf434a96", "the partitions bar calls build_multi_partition_ranges_generic through its module's name"),
    "dagster_graphql.implementation.fetch_asset_checks.build_multi_partition_statuses_for_checks":
        ("5b960cc93375d148", "the checks' partition statuses call it through their module's name too"),
    "dagster._core.instance.methods.storage_methods.StorageMethods.optimize_for_webserver":
        ("103abbc3f9bbee80", "the webserver's call reaches the event log's optimize_for_webserver, which installs partition_health"),
    "dagster_webserver.cli.dagster_webserver.callback":
        ("8ee94f3a94ac05d5", "dagster-webserver calls instance.optimize_for_webserver at start-up"),
    # the asset pages' partition status read as stored when nothing happened (instance/cached_status.py)
    "dagster._core.storage.event_log.base.EventLogStorage.get_asset_status_cache_values":
        ("67570af734ba01be", "the asset pages' status cache reads reach the storage's method, one update per asset"),
    "dagster._core.storage.partition_status_cache.get_and_update_asset_status_cache_value":
        ("ecfbf48fca827cf3", "which stored row the update starts from (the partitions definition's identifier)"),
    "dagster._core.storage.partition_status_cache._build_status_cache":
        ("bb95c041897a4f09", "with no materialization or planned event after the row and no run in progress, the update "
                             "gives back the stored subsets (unchanged_cache_value)"),
    "dagster._core.storage.partition_status_cache.get_last_planned_storage_id":
        ("eccd086beb7bbee9", "the latest planned event the row must cover"),
    # the partitions planned and not materialized, in one query (event_log.BulkPostgresEventLogStorage;
    # the method itself is pinned above)
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._latest_event_ids_by_partition_subquery":
        ("254ea79e7d041f2a", "its filters: asset key, partition not null, event types, after_cursor, the wipe filter"),
    "dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._add_assets_wipe_filter_to_query":
        ("82273d8423fb2773", "an asset's events before its last wipe are left out"),
    # a backfill's runs formed as boxes (instance/backfill_runs.py)
    "backfill_dagster.instance.backfill_runs._dagster_build_run_requests_with_backfill_policy":
        ("b586ec03ce74ad82", "Dagster's run formation for one group of assets: its signature, and what it does for the cases left to it"),
    "dagster._core.definitions.automation_tick_evaluation_context.build_run_requests_with_backfill_policies":
        ("47edbfc8ae75cef3", "it calls _build_run_requests_with_backfill_policy through its module's name, per (partitions, keys, policy) group"),
    "dagster._core.definitions.automation_tick_evaluation_context._build_run_request_for_partition_key_range":
        ("e0eb4832dc6bda4e", "a range run request: the range tags, no partition key"),
    "dagster._core.execution.asset_backfill._get_cant_run_because_of_parent_reason":
        ("1906418f864128f4", "h1/h4 run with m15 in one box run while their backfill policies are equal"),
    # the steps' own partition box (partitions.run_partitions) and the daemon's plain range keys (backfill_submit.range_keys)
    "dagster._core.definitions.partitions.definition.multi.MultiPartitionsDefinition.get_partition_keys_in_range":
        ("2f624885278f0d3b", "a range run's keys: the box of each dimension's range, dates outermost; "
                             "backfill_submit.range_keys builds the same keys as strings"),
    # the backfill daemon's run submission with plain keys (instance/backfill_submit.py)
    "backfill_dagster.instance.backfill_submit._dagster_get_requested_asset_graph_subset_from_run_requests":
        ("03fe33d91f6f8b0b", "Dagster's requested subset of run requests: per range request, each asset's "
                             "get_entity_subset_in_range unioned; anything else left to it, one request at a time"),
    "backfill_dagster.instance.backfill_submit._dagster_get_resolved_partitions_subset_for_events":
        ("829df878172afe52", "Dagster's planned events' subset: a stored one first, else the range tags' "
                             "subset_with_partition_keys(get_partition_keys_in_range), else the partition tag"),
    "dagster._core.execution.asset_backfill.AssetBackfillData.with_run_requests_submitted":
        ("55d3e1fe57d04eca", "it calls _get_requested_asset_graph_subset_from_run_requests through its module's name"),
    "dagster._core.asset_graph_view.asset_graph_view.AssetGraphView.get_entity_subset_in_range":
        ("3549bd287768f74f", "an asset's range is its definition's empty subset with the range's keys, under the view's context"),
    "dagster._core.definitions.partitions.subset.partitions_subset.PartitionsSubset.with_partition_key_range":
        ("ddde59527fa2fa2c", "a range subset is with_partition_keys(get_partition_keys_in_range(range))"),
    "dagster._core.definitions.partitions.utils.multi.MultiPartitionKey.__new__":
        ("2673973897e6fbc9", "a key's string is its dimensions' keys joined by '|' in dimension-name order"),
    "dagster._core.definitions.partitions.definition.multi.MultiPartitionsDefinition.__init__":
        ("c6e4553f1ffee819", "partitions_defs are sorted by dimension name"),
    # what orchestration/pool_wait.py replaces: a run waiting for a pool slot sleeps between checks
    "backfill_dagster.orchestration.pool_wait._dagster_interval":
        ("d9b44ab68eb41a99", "Dagster's interval is min([0, ...]), never above zero (the busy wait the replacement ends)"),
    "dagster._core.execution.plan.active.ActiveExecution.sleep_interval":
        ("f49c9f3e9028a7d1", "the wait for a pending claim is interval_to_next_pending_claim_check(), min with retries'"),
    "dagster._core.execution.plan.active.ActiveExecution.sleep_til_ready":
        ("bad9225fc3c67290", "it sleeps sleep_interval() seconds when that is above zero, else not at all"),
    "dagster._core.execution.plan.instance_concurrency_context.InstanceConcurrencyContext.claim":
        ("8375daa833c671e5", "a refused claim sets _pending_timeouts[step] to its next check; before then claim() does not ask"),
}


def source_hash(qualified: str) -> str:
    module, attrs = None, qualified.split(".")
    for i in range(len(attrs), 0, -1):  # the longest importable prefix is the module
        try:
            module = importlib.import_module(".".join(attrs[:i]))
        except ImportError:
            continue
        attrs = attrs[i:]
        break
    obj = module
    for attr in attrs:
        obj = inspect.getattr_static(obj, attr)
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_dagster_is_the_version_the_internals_were_read_in():
    installed = {name: version(name) for name in PINNED_VERSIONS}
    assert installed == PINNED_VERSIONS, (
        f"installed {installed}; the project relies on internals of {PINNED_VERSIONS} (pyproject pins these "
        "exact versions): re-read every entry of INTERNALS in this file before moving the pin"
    )


def test_pyproject_pins_the_versions_the_internals_were_read_in():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    pins = {d.split("==")[0]: d.split("==")[1] for d in project["dependencies"] if d.startswith("dagster")}
    assert pins == {"dagster": PINNED_VERSIONS["dagster"], "dagster-webserver": PINNED_VERSIONS["dagster"],
                    "dagster-graphql": PINNED_VERSIONS["dagster"], "dagster-postgres": PINNED_VERSIONS["dagster-postgres"]}


@pytest.mark.parametrize("qualified", sorted(INTERNALS))
def test_an_internal_the_project_relies_on_is_unchanged(qualified):
    recorded, what = INTERNALS[qualified]
    current = source_hash(qualified)
    assert current == recorded, (
        f"{qualified} changed in dagster {version('dagster')} / dagster-postgres {version('dagster-postgres')} "
        f"(recorded for {PINNED_VERSIONS}): re-check {what}; then record its new hash ({current}) with "
        "`python -m tests.orchestration.test_dagster_internals`"
    )


if __name__ == "__main__":  # print the table with the installed versions' hashes
    for name in sorted(INTERNALS):
        sys.stdout.write(f"{name}  {source_hash(name)}\n")
