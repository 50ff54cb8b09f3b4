"""The queue adapter: the only package that imports rq or spells rq's Redis keys.

See docs/architecture.md ("The queue adapter") for what each module holds.
"""
