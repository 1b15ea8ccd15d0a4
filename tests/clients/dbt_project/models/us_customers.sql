-- US customers, read through the gateway: sensitive columns arrive masked.
select customer_id, email, ssn, country
from `demo-project`.`sales`.`customers`
where country = 'US'
