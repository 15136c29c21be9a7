-- Rows the tap reported deleted (`_sdc_deleted_at`: a full export, a bulk export, a portal walk, docs/deletions.md)
-- are dropped here, so no mart counts them.
-- One row per patient (client), current version. Identity and status only: names and birth dates stay in the
-- raw table for teams whose warehouse is cleared for PHI.
with raw as (
    {{ wellsky_stream('patients', {
        'id': 'varchar', 'mrn': 'varchar', 'status': 'varchar', 'gender': 'varchar',
        'birth_date': 'date', 'coverage': json_type(), 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as patient_id,
    mrn,
    status as patient_status,
    gender,
    birth_date,
    '{{ var("wellsky_product") }}' as product,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
