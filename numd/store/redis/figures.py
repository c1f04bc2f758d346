"""The figures ``/metrics`` shows of an instance whose state is in Redis (per instance: they
count this instance's work and connections)."""

from __future__ import annotations

from numd.store.redis.state import SharedState


def metric_values(state: SharedState) -> list[tuple[str, str, str, float]]:
    """This instance's Redis figures for ``/metrics``: (kind, name, help, value)."""
    follower = state.follower
    return [
        (
            "gauge",
            "numd_instance_clients_connected",
            "Counter clients connected to this instance.",
            state.local_clients(),
        ),
        (
            "gauge",
            "numd_redis_connected",
            "1 while the connection for changes is up.",
            float(state.redis.connected),
        ),
        (
            "gauge",
            "numd_redis_ready",
            "1 while changes can be made and the local copy is current.",
            float(state.ready),
        ),
        (
            "counter",
            "numd_redis_unavailable",
            "Changes refused because Redis could not be reached in time.",
            state.unavailable,
        ),
        (
            "counter",
            "numd_redis_command_timeouts",
            "Redis commands that got no answer in time.",
            state.redis.timeouts,
        ),
        (
            "counter",
            "numd_redis_leases_lost",
            "Client IDs this instance found held by another instance.",
            state.leases_lost,
        ),
        (
            "gauge",
            "numd_redis_pending_updates",
            "Clients whose reports or disconnects wait to be sent.",
            state.pending_updates,
        ),
        (
            "counter",
            "numd_redis_update_batches",
            "Script calls that sent client updates.",
            state.update_batches,
        ),
        (
            "counter",
            "numd_redis_entries_applied",
            "Change-stream entries applied to the local copy.",
            follower.applied,
        ),
        (
            "counter",
            "numd_redis_snapshot_loads",
            "Snapshots of the shared state loaded.",
            follower.loads,
        ),
        (
            "counter",
            "numd_redis_stream_gaps",
            "Reloads because change-stream entries were trimmed unread.",
            follower.gaps,
        ),
    ]
