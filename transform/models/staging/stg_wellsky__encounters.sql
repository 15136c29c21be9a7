-- Documented visits (care logs in personal care).
-- Rows the tap reported deleted (`_sdc_deleted_at`, e.g. a Home Connect reconcile) are dropped here, so no
-- mart counts them; a loader that hard-deletes never keeps them (docs/deletions.md).
with raw as (
    {{ wellsky_stream('encounters', {
        'id': 'varchar', 'patient_id': 'varchar', 'practitioner_id': 'varchar', 'appointment_id': 'varchar',
        'start': 'timestamp', 'end': 'timestamp', 'discipline': 'varchar', 'status': 'varchar',
        'finalized': 'boolean', 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as encounter_id,
    patient_id,
    practitioner_id,
    appointment_id,
    {{ adapter.quote('start') }} as encounter_start,
    {{ adapter.quote('end') }} as encounter_end,
    case when {{ adapter.quote('end') }} is not null
         then {{ minutes_between(adapter.quote('start'), adapter.quote('end')) }} end as documented_minutes,
    discipline,
    status as encounter_status,
    coalesce(finalized, false) as is_finalized,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
