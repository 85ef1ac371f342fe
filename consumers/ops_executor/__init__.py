"""ops_executor: runs hot updates on the ops-manager machine (game servers over a host runner, CDN dirs).

Bound to its projects' *update requested* events; reports *update started*, one *IP finished*
or *CDN dir finished* per target, and *update completed*, with the seed's semantics.
"""
