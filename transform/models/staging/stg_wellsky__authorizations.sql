-- Rows the tap reported deleted (`_sdc_deleted_at`: a full export, a bulk export, a portal walk, docs/deletions.md)
-- are dropped here, so no mart counts them.
-- Payer prior authorizations. WellSky counts a unit as used when the visit is booked (cancelling releases it).
with raw as (
    {{ wellsky_stream('authorizations', {
        'id': 'varchar', 'patient_id': 'varchar', 'payer_id': 'varchar', 'payer_name': 'varchar',
        'member_id': 'varchar', 'service_codes': json_type(), 'unit_type': 'varchar', 'rounding': 'varchar',
        'units_authorized': 'integer', 'units_used': 'integer', 'start_date': 'date', 'end_date': 'date',
        'status': 'varchar', 'updated_at': 'timestamp', '_sdc_deleted_at': 'timestamp'}) }}
)
select
    id as authorization_id,
    patient_id,
    payer_id,
    payer_name,
    service_codes,
    unit_type,
    coalesce(rounding, 'nearest') as rounding,
    units_authorized,
    units_used,
    start_date,
    end_date,
    status as authorization_status,
    updated_at
from raw
where {{ adapter.quote('_sdc_deleted_at') }} is null
