{#-
  A raw stream, or an empty relation with the same typed columns when the loader never created it.
  Why: a product exposes only some streams (personal care has no authorizations, care plans, referrals or
  coverage), and a mart over a missing stream should show zero rows, not fail the whole build.
  `columns` maps column name -> SQL type; only these columns are selected, so an extra column a newer tap
  adds (or a loader's _sdc_ metadata) never breaks the staging model.
-#}
{% macro wellsky_stream(name, columns) -%}
  {%- set relation = adapter.get_relation(database=target.database, schema=var('wellsky_raw_schema'), identifier=name) -%}
  {%- if relation is none -%}
    select {% for column, type in columns.items() %}cast(null as {{ type }}) as {{ adapter.quote(column) }}{% if not loop.last %}, {% endif %}{% endfor %}
    where 1 = 0
  {%- else -%}
    {%- set present = adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list -%}
    select {% for column, type in columns.items() -%}
      {%- if column in present and type == json_type() %}{{ to_json_value(adapter.quote(column)) }}{% elif column in present %}cast({{ adapter.quote(column) }} as {{ type }}){% else %}cast(null as {{ type }}){% endif %} as {{ adapter.quote(column) }}{% if not loop.last %}, {% endif %}
    {%- endfor %}
    from {{ relation }}
  {%- endif -%}
{%- endmacro %}

{#- JSON text of a nested object or array column, whichever JSON type the loader chose. -#}
{% macro json_type() -%}{{ return(adapter.dispatch('json_type', 'wellsky')()) }}{%- endmacro %}
{% macro default__json_type() -%}json{%- endmacro %}
{% macro postgres__json_type() -%}jsonb{%- endmacro %}

{#- A nested column as JSON: loaders store arrays as JSON (target-duckdb) or as text[]/jsonb[] (target-postgres). -#}
{% macro to_json_value(column) -%}{{ return(adapter.dispatch('to_json_value', 'wellsky')(column)) }}{%- endmacro %}
{% macro default__to_json_value(column) -%}cast({{ column }} as json){%- endmacro %}
{% macro postgres__to_json_value(column) -%}to_jsonb({{ column }}){%- endmacro %}

{#- One string field of a JSON object column. -#}
{% macro json_field(column, key) -%}{{ return(adapter.dispatch('json_field', 'wellsky')(column, key)) }}{%- endmacro %}
{% macro default__json_field(column, key) -%}({{ column }} ->> '{{ key }}'){%- endmacro %}

{#- True when a JSON array column holds the given string value. -#}
{% macro json_array_contains(column, value) -%}{{ return(adapter.dispatch('json_array_contains', 'wellsky')(column, value)) }}{%- endmacro %}
{% macro default__json_array_contains(column, value) -%}json_contains({{ column }}, to_json({{ value }})){%- endmacro %}
{% macro postgres__json_array_contains(column, value) -%}({{ column }} ? {{ value }}){%- endmacro %}

{#- Minutes between two timestamps. -#}
{% macro minutes_between(start, finish) -%}{{ return(adapter.dispatch('minutes_between', 'wellsky')(start, finish)) }}{%- endmacro %}
{% macro default__minutes_between(start, finish) -%}(date_diff('second', {{ start }}, {{ finish }}) / 60.0){%- endmacro %}
{% macro postgres__minutes_between(start, finish) -%}(extract(epoch from ({{ finish }} - {{ start }})) / 60.0){%- endmacro %}

{#- The date the marts treat as today (var as_of_date, else the warehouse's current date). -#}
{% macro as_of_date() -%}
  {%- if var('as_of_date') -%}cast('{{ var("as_of_date") }}' as date){%- else -%}current_date{%- endif -%}
{%- endmacro %}

{#- Start of the ISO week (Monday) of a timestamp or date. -#}
{% macro week_start(value) -%}cast(date_trunc('week', {{ value }}) as date){%- endmacro %}

{#- Payer units an appointment consumes: visits count 1; hours and 15-minute units round by the payer's rule. -#}
{% macro appointment_units(unit_type, rounding, minutes) -%}
  case {{ unit_type }}
    when 'visit' then 1.0
    when 'hour' then {{ _round_units(rounding, minutes ~ ' / 60.0') }}
    when '15min' then {{ _round_units(rounding, minutes ~ ' / 15.0') }}
  end
{%- endmacro %}
{% macro _round_units(rounding, amount) -%}
  case {{ rounding }} when 'up' then ceil({{ amount }}) when 'down' then floor({{ amount }}) else round({{ amount }}) end
{%- endmacro %}
