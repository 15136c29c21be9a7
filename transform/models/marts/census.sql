-- Active patients by primary payer and product, as of the run date. A patient with no active coverage on
-- file counts under payer "self_pay_or_unknown" so the census always adds up to the active patients.
with patients as (
    select * from {{ ref('stg_wellsky__patients') }}
    where patient_status = 'active'
),

primary_coverage as (
    select *
    from (
        select
            c.*,
            row_number() over (partition by patient_id order by coverage_order, coverage_id) as rank_for_patient
        from {{ ref('stg_wellsky__coverage') }} as c
        where coverage_status = 'active'
          and period_start <= {{ as_of_date() }}
          and (period_end is null or period_end >= {{ as_of_date() }})
    ) as ranked
    where rank_for_patient = 1
)

select
    p.product,
    coalesce(c.payer_id, 'self_pay_or_unknown') as payer_id,
    coalesce(max(c.payer_name), 'Self-pay or unknown') as payer_name,
    count(*) as active_patients,
    {{ as_of_date() }} as as_of_date
from patients as p
left join primary_coverage as c on c.patient_id = p.patient_id
group by p.product, coalesce(c.payer_id, 'self_pay_or_unknown')
