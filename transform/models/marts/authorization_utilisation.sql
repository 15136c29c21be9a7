-- Per payer authorization: units authorized, booked on the schedule, delivered, remaining, and at risk of
-- over-use. An appointment draws on an authorization when it is for the same patient and payer, falls inside
-- the authorization's dates and its discipline or service code is covered (the rule WellSky applies at booking).
with authorizations as (
    select * from {{ ref('stg_wellsky__authorizations') }}
),

appointments as (
    select * from {{ ref('stg_wellsky__appointments') }}
    where appointment_status in ('scheduled', 'completed')
),

drawn as (
    select
        a.authorization_id,
        ap.appointment_status,
        {{ appointment_units('a.unit_type', 'a.rounding', 'ap.scheduled_minutes') }} as units
    from authorizations as a
    join appointments as ap
      on ap.patient_id = a.patient_id
     and ap.payer_id = a.payer_id
     and ap.visit_date between a.start_date and a.end_date
     and ({{ json_array_contains('a.service_codes', 'ap.discipline') }}
          or {{ json_array_contains('a.service_codes', 'ap.service_code') }})
),

per_authorization as (
    select
        authorization_id,
        sum(units) as units_booked,
        sum(case when appointment_status = 'scheduled' then units else 0 end) as units_scheduled,
        sum(case when appointment_status = 'completed' then units else 0 end) as units_delivered,
        count(*) as appointments
    from drawn
    group by authorization_id
)

select
    a.authorization_id,
    a.patient_id,
    a.payer_id,
    a.payer_name,
    a.unit_type,
    a.start_date,
    a.end_date,
    a.authorization_status,
    a.units_authorized,
    a.units_used as units_used_reported,
    coalesce(p.units_scheduled, 0) as units_scheduled,
    coalesce(p.units_delivered, 0) as units_delivered,
    coalesce(p.units_booked, 0) as units_booked,
    coalesce(p.appointments, 0) as appointments,
    a.units_authorized - greatest(a.units_used, coalesce(p.units_booked, 0)) as units_remaining,
    case when a.units_authorized > 0
         then round(cast(greatest(a.units_used, coalesce(p.units_booked, 0)) as numeric) / a.units_authorized, 4)
    end as utilisation,
    coalesce(p.units_booked, 0) > a.units_authorized as is_over_booked,
    a.authorization_status = 'active'
        and a.end_date >= {{ as_of_date() }}
        and greatest(a.units_used, coalesce(p.units_booked, 0))
            >= {{ var('at_risk_utilisation') }} * a.units_authorized as is_at_risk
from authorizations as a
left join per_authorization as p using (authorization_id)
