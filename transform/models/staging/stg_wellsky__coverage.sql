with raw as (
    {{ wellsky_stream('coverage', {
        'id': 'varchar', 'patient_id': 'varchar', 'payer_id': 'varchar', 'payer_name': 'varchar',
        'plan_name': 'varchar', 'order': 'integer', 'period_start': 'date', 'period_end': 'date',
        'status': 'varchar', 'updated_at': 'timestamp'}) }}
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
