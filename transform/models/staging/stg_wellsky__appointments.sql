-- Scheduled visits (home health, hospice) and shifts (personal care).
-- A Home Connect shift occurrence is keyed `<series id>@<start>` and keeps the source shift id in `series_id`:
-- every occurrence of a recurring shift shares it, and a care log names only that id (docs/guide.md).
-- Rows the tap reported deleted (`_sdc_deleted_at`, e.g. a Home Connect reconcile) are dropped here, so no
-- mart counts them; a loader that hard-deletes never keeps them (docs/deletions.md).
with raw as (
    {{ wellsky_stream('appointments', {
        'id': 'varchar', 'series_id': 'varchar', 'external_id': 'varchar', 'patient_id': 'varchar', 'practitioner_id': 'varchar',
        'payer_id': 'varchar', 'start': 'timestamp', 'end': 'timestamp', 'status': 'varchar',
        'discipline': 'varchar', 'service_code': 'varchar', 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as appointment_id,
    series_id,
    external_id,
    patient_id,
    practitioner_id,
    payer_id,
    {{ adapter.quote('start') }} as scheduled_start,
    {{ adapter.quote('end') }} as scheduled_end,
    {{ minutes_between(adapter.quote('start'), adapter.quote('end')) }} as scheduled_minutes,
    cast({{ adapter.quote('start') }} as date) as visit_date,
    status as appointment_status,
    discipline,
    service_code,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
