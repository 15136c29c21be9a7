-- Rows the tap reported deleted (`_sdc_deleted_at`: a full export, a bulk export, a portal walk, docs/deletions.md)
-- are dropped here, so no mart counts them.
with raw as (
    {{ wellsky_stream('practitioners', {
        'id': 'varchar', 'npi': 'varchar', 'first_name': 'varchar', 'last_name': 'varchar',
        'credentials': 'varchar', 'active': 'boolean', 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as practitioner_id,
    npi,
    first_name,
    last_name,
    credentials,
    coalesce(active, true) as is_active,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
