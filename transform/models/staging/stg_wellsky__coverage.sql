-- Rows the tap reported deleted (`_sdc_deleted_at`: a full export, a bulk export, a portal walk, docs/deletions.md)
-- are dropped here, so no mart counts them.
with raw as (
    {{ wellsky_stream('coverage', {
        'id': 'varchar', 'patient_id': 'varchar', 'payer_id': 'varchar', 'payer_name': 'varchar',
        'plan_name': 'varchar', 'order': 'integer', 'period_start': 'date', 'period_end': 'date',
        'status': 'varchar', 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as coverage_id,
    patient_id,
    payer_id,
    payer_name,
    plan_name,
    {{ adapter.quote('order') }} as coverage_order,
    period_start,
    period_end,
    status as coverage_status,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
