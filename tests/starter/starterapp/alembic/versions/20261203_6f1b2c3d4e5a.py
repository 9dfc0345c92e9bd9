"""init

Revision ID: 6f1b2c3d4e5a
Revises:
Create Date: 2026-12-03 10:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '6f1b2c3d4e5a'
down_revision = None
branch_labels = None
depends_on = None

def upgrade():
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=True),
    sa.Column('value', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models'))
    )
    op.create_index('my_index', 'models', ['name'], unique=True, mysql_length=255)

def downgrade():
    op.drop_index('my_index', table_name='models', mysql_length=255)
    op.drop_table('models')
