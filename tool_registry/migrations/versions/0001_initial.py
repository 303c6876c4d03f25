"""Initial schema: tools, calls and the incremental aggregates.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tools",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("api_type", sa.String(255), nullable=True),
        sa.Column("duration_hint", sa.Double(), nullable=True),
        sa.Column("registered_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "calls",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tool", sa.String(200), sa.ForeignKey("tools.name"), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("duration", sa.Double(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ok", "error", native_enum=False, length=8, name="call_status"),
            nullable=False,
        ),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.Column("input_size", sa.BigInteger(), nullable=True),
        sa.Column("output_size", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "tool_stats",
        sa.Column("tool", sa.String(200), sa.ForeignKey("tools.name"), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("total_sq", sa.Double(), nullable=False),
        sa.Column("min", sa.Double(), nullable=False),
        sa.Column("max", sa.Double(), nullable=False),
        sa.Column("ewma_num", sa.Double(), nullable=False),
        sa.Column("ewma_den", sa.Double(), nullable=False),
        sa.Column("last_at", sa.Double(), nullable=True),
    )
    op.create_table(
        "tool_histogram",
        sa.Column("tool", sa.String(200), sa.ForeignKey("tools.name"), primary_key=True),
        sa.Column("bucket", sa.Integer(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tool_histogram")
    op.drop_table("tool_stats")
    op.drop_table("calls")
    op.drop_table("tools")
